"""The SaE family at a glance: one markdown table row a model (``timm-sae list``, ``timm-sae demo``)."""
from typing import List

import timm
from timm.models import get_pretrained_cfg

from .convert import is_non_commercial, loads_se_weights
from .measure import describe, se_twin


def family_table(img_size: int = 224) -> List[str]:
    """Markdown table of the registered SaE models: params, GMACs, SE twin and its params, default tag and its license,
    and how many conversion tags load plain and SE weights.

    ``timm.list_pretrained(f'{name}.*')`` lists the tags with weights of a model.
    """
    input_size = (3, img_size, img_size)
    lines = [
        f'| model | params (M) | GMACs @ {img_size}px | SE twin | twin params (M) | default tag | license | '
        'tags: plain + SE weights |',
        '|---|---:|---:|---|---:|---|---|---:|',
    ]
    for name in timm.list_models('sae*'):
        sae, twin = describe(name, input_size), se_twin(name)
        twin_params = describe(twin, input_size)['params_m']
        tags = timm.list_pretrained(f'{name}.*')
        se = sum(loads_se_weights(name, vars(get_pretrained_cfg(tag))) for tag in tags)
        cfg = get_pretrained_cfg(name)
        license = f'{cfg.license} (non-commercial)' if is_non_commercial(cfg.license) else cfg.license
        lines.append(
            f"| {name} | {sae['params_m']:.2f} | {sae['gmacs']:.2f} | {twin} | {twin_params:.2f} | "
            f"{cfg.tag} | {license} | {len(tags) - se} + {se} |")
    return lines
