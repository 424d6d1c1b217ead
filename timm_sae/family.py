"""The SaE family at a glance: one markdown table row a model (``timm-sae list``, ``timm-sae demo``)."""
from typing import List

import timm

from .measure import describe, se_twin


def family_table(img_size: int = 224) -> List[str]:
    """Markdown table of the registered SaE models: params, GMACs, SE twin and its params, tags."""
    input_size = (3, img_size, img_size)
    lines = [
        f'| model | params (M) | GMACs @ {img_size}px | SE twin | twin params (M) | tags |',
        '|---|---:|---:|---|---:|---|',
    ]
    for name in timm.list_models('sae*'):
        sae, twin = describe(name, input_size), se_twin(name)
        twin_params = describe(twin, input_size)['params_m']
        tags = ', '.join(t.split('.', 1)[1] for t in timm.list_models(name, include_tags=True))
        lines.append(
            f"| {name} | {sae['params_m']:.2f} | {sae['gmacs']:.2f} | {twin} | {twin_params:.2f} | {tags} |")
    return lines
