"""The SaE family at a glance: one markdown table row a model (``timm-sae list``, ``timm-sae demo``)."""
from typing import List

import timm
from timm.models import get_pretrained_cfg

from .measure import describe, se_twin


def family_table(img_size: int = 224) -> List[str]:
    """Markdown table of the registered SaE models: params, GMACs, SE twin and its params, default tag and how many.

    ``timm.list_models(name, include_tags=True)`` lists every tag of a model.
    """
    input_size = (3, img_size, img_size)
    lines = [
        f'| model | params (M) | GMACs @ {img_size}px | SE twin | twin params (M) | default tag | tags |',
        '|---|---:|---:|---|---:|---|---:|',
    ]
    for name in timm.list_models('sae*'):
        sae, twin = describe(name, input_size), se_twin(name)
        twin_params = describe(twin, input_size)['params_m']
        tags = len(timm.list_models(name, include_tags=True))
        lines.append(
            f"| {name} | {sae['params_m']:.2f} | {sae['gmacs']:.2f} | {twin} | {twin_params:.2f} | "
            f"{get_pretrained_cfg(name).tag} | {tags} |")
    return lines
