"""The SaE family at a glance: one markdown table row a model (``timm-sae list``, ``timm-sae demo``)."""
from collections import Counter
from typing import Any, List, Mapping

import timm
from timm.models import PretrainedCfg, get_arch_pretrained_cfgs, get_pretrained_cfg, split_model_name_tag

from .measure import describe
from .sae_resnet import conversion_tag, is_non_commercial, twins

__all__ = ['family_table', 'tag_weights']


def tag_weights(name: str, cfg: Mapping[str, Any]) -> str:
    """What the tag ``<arch>.<tag>`` with pretrained cfg ``cfg`` (a dict) loads: ``'plain'`` or ``'se'`` (timm's
    weights of the plain or SE twin, converted exactly: ``hf_hub_id`` is timm's ``timm/<source>`` and the tag is
    ``conversion_tag(<source>)``), ``'sae'`` (SaE weights of its own) or ``'untrained'`` (no weights)."""
    if not any(cfg.get(k) for k in ('hf_hub_id', 'url', 'file')):
        return 'untrained'
    arch, tag = split_model_name_tag(name)
    source = (cfg.get('hf_hub_id') or '').removeprefix('timm/')
    if source != cfg.get('hf_hub_id') and tag == conversion_tag(source):
        plain, se, _ = twins(arch)
        source_arch = split_model_name_tag(source)[0]
        if source_arch in (plain, se):
            return 'plain' if source_arch == plain else 'se'
    return 'sae'


def family_table(img_size: int = 224) -> List[str]:
    """Markdown table of the registered SaE models: params, GMACs, timm's SE twin (or none) and its params, the
    default tag and its license, and how many tags load converted plain, converted SE and SaE weights, apart from
    the untrained ones (``tag_weights``)."""
    input_size = (3, img_size, img_size)
    lines = [
        f'| model | params (M) | GMACs @ {img_size}px | SE twin | SE twin params (M) | default tag | license | '
        'weight tags: plain + SE + SaE | untrained tags |',
        '|---|---:|---:|---|---:|---|---|---:|---:|',
    ]
    for name in timm.list_models('sae*'):
        sae, twin = describe(name, input_size), twins(name).se
        twin_params = f"{describe(twin, input_size)['params_m']:.2f}" if twin else '-'
        kinds = Counter(tag_weights(tag, vars(cfg)) for tag, cfg in get_arch_pretrained_cfgs(name).items())
        cfg = get_pretrained_cfg(name) or PretrainedCfg()
        license = f'{cfg.license} (non-commercial)' if is_non_commercial(cfg.license) else cfg.license
        lines.append(
            f"| {name} | {sae['params_m']:.2f} | {sae['gmacs']:.2f} | {twin or 'none'} | {twin_params} | {cfg.tag} | "
            f"{license} | {kinds['plain']} + {kinds['se']} + {kinds['sae']} | {kinds['untrained']} |")
    return lines
