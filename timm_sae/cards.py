"""Model cards of the published SaE weights, rendered from results files, never typed by hand.

Each published tag has a folder ``hub_cards/<arch>.<tag>/`` holding ``results.json`` (written by
the benchmark that measured the weights) and ``README.md``, its render by ``render_card``
(``timm-sae card hub_cards/<arch>.<tag>``), which is what ``timm-sae export --card-results``
puts in the Hub folder. The card shows every figure exactly as the results file has it.

Results file (JSON object)::

    model       str    architecture, e.g. "saeresnet18"
    tag         str    weight tag, e.g. "fmnist"; the Hub repository is <HUB_ORG>/<model>.<tag>
    dataset     dict   {"id": Hub dataset id, "name": display name, "split": evaluated split}
    metrics     dict   name -> number, e.g. {"top1": 91.5, "top5": 99.8, "loss": 0.24}; top1 / top5 in %
    params      int    parameter count
    gmacs       number GMACs of one image at img_size
    img_size    int or [H, W]  evaluation input size
    recipe      dict   training recipe: name -> value (epochs, optimizer, lr, batch size, ...)
    command     str    the command that produced the weights and these figures
    versions    dict   package -> version (timm, torch, timm_sae, ...)
    hardware    str    where it ran, e.g. "2-core CPU"
  optional:
    repo_id     str    Hub repository, default "<HUB_ORG>/<model>.<tag>"
    in_chans    int    input channels (default 3)
    num_classes int    classifier size
    model_args  dict   entrypoint arguments of the weights (sae_cardinality, ...)
    license     str    default "apache-2.0"
    checkpoint  str    the checkpoint the weights were exported from
"""
import json
import os
from pathlib import Path
from string import Template
from typing import Any, Dict, List, Mapping, Optional, Union

import timm
import yaml

from .measure import se_twin
from .sae_resnet import HUB_ORG

__all__ = [
    'RESULTS_NAME', 'CARD_NAME', 'CardError', 'load_results', 'check_results', 'check_results_match',
    'render_card', 'write_card', 'registered_cfgs', 'check_cards',
]

PathLike = Union[str, os.PathLike]

RESULTS_NAME = 'results.json'
CARD_NAME = 'README.md'

_NUMBER = (int, float)
RESULTS_KEYS = {
    'model': str, 'tag': str, 'dataset': dict, 'metrics': dict, 'params': int, 'gmacs': _NUMBER,
    'img_size': (int, list), 'recipe': dict, 'command': str, 'versions': dict, 'hardware': str,
}
OPTIONAL_KEYS = {
    'repo_id': str, 'in_chans': int, 'num_classes': int, 'model_args': dict, 'license': str, 'checkpoint': str,
}
DATASET_KEYS = ('id', 'name', 'split')
# metric name -> (model-index metric type, display name)
METRIC_TYPES = {
    'top1': ('accuracy', 'Top-1 accuracy'),
    'top5': ('top_5_accuracy', 'Top-5 accuracy'),
    'loss': ('loss', 'Loss'),
}

PAPER = 'Squeeze aggregated excitation network: https://arxiv.org/abs/2308.13343'
CITATION = '''\
@article{narayanan2023sae,
  title={Squeeze aggregated excitation network},
  author={Narayanan, Mahendran},
  journal={arXiv preprint arXiv:2308.13343},
  year={2023}
}'''
TIMM_CITATION = '''\
@misc{rw2019timm,
  author = {Ross Wightman},
  title = {PyTorch Image Models},
  year = {2019},
  publisher = {GitHub},
  journal = {GitHub repository},
  doi = {10.5281/zenodo.4414861},
  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}}
}'''

TEMPLATE = Template('''\
---
${front_matter}---
# Model card for ${name}

${description}

## Model Details
${details}

## Model Usage
The SaE models come with the `timm-sae` package (`pip install timm-sae`): `import timm_sae` registers them
with timm, after which timm loads these weights like its own.

### Image Classification
```python
from urllib.request import urlopen
from PIL import Image
import timm
import timm_sae  # registers the SaE models with timm
import torch

img = Image.open(urlopen(
    'https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/beignets-task-guide.png'
)).convert('${pil_mode}')

model = timm.create_model('${model_id}', pretrained=True)
model = model.eval()

# get model specific transforms (normalization, resize)
data_config = timm.data.resolve_model_data_config(model)
transforms = timm.data.create_transform(**data_config, is_training=False)

output = model(transforms(img).unsqueeze(0))  # unsqueeze single image into batch of 1

top${topk}_probabilities, top${topk}_class_indices = torch.topk(output.softmax(dim=1) * 100, k=${topk})
```

### Feature Map Extraction
```python
model = timm.create_model('${model_id}', pretrained=True, features_only=True)
model = model.eval()

data_config = timm.data.resolve_model_data_config(model)
transforms = timm.data.create_transform(**data_config, is_training=False)

output = model(transforms(img).unsqueeze(0))  # one feature map a stage

for o in output:
    # print shape of each feature map in output
    print(o.shape)
```

### Image Embeddings
```python
model = timm.create_model('${model_id}', pretrained=True, num_classes=0)  # remove classifier nn.Linear
model = model.eval()

data_config = timm.data.resolve_model_data_config(model)
transforms = timm.data.create_transform(**data_config, is_training=False)

output = model(transforms(img).unsqueeze(0))  # output is (batch_size, num_features) shaped tensor

# or equivalently (without needing to set num_classes=0)
output = model.forward_features(transforms(img).unsqueeze(0))  # unpooled, (1, num_features, H / 32, W / 32)
output = model.forward_head(output, pre_logits=True)  # (1, num_features)
```

## Results
${results}

## Publishing
${publish_intro}
```bash
${publish}
```

## Citation
```bibtex
${citation}
```
```bibtex
${timm_citation}
```
''')


class CardError(ValueError):
    """A results file or card folder that does not hold to the schema; the message says what to fix."""


def check_results(results: Any, source: str = 'results') -> Dict[str, Any]:
    """``results`` if it holds to the results file schema (module docstring), else ``CardError``."""
    if not isinstance(results, dict):
        raise CardError(f'{source} must be a JSON object, got {type(results).__name__}')
    missing = [k for k in RESULTS_KEYS if k not in results]
    unknown = sorted(k for k in results if k not in RESULTS_KEYS and k not in OPTIONAL_KEYS)
    if missing or unknown:
        raise CardError(
            f'{source}: missing keys {missing}, unknown keys {unknown}; the schema is in timm_sae/cards.py')
    for key, value in results.items():
        kind = RESULTS_KEYS.get(key) or OPTIONAL_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CardError(f'{source}: {key} must be {_kind_name(kind)}, got {value!r}')
    if sorted(results['dataset']) != sorted(DATASET_KEYS) or not all(
            isinstance(v, str) for v in results['dataset'].values()):
        raise CardError(f'{source}: dataset must be {{"id": ..., "name": ..., "split": ...}} (strings)')
    if not results['metrics'] or not all(
            isinstance(v, _NUMBER) and not isinstance(v, bool) for v in results['metrics'].values()):
        raise CardError(f'{source}: metrics must map metric names to numbers, e.g. {{"top1": 91.5}}')
    return results


def _kind_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return ' or '.join({int: 'an integer', float: 'a number', str: 'a string', dict: 'an object',
                        list: 'a list'}[k] for k in kinds)


def load_results(path: PathLike) -> Dict[str, Any]:
    """Read and check a results file."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding='utf-8'))
    except OSError as e:
        raise CardError(f'cannot read {path}: {e.strerror}') from e
    except json.JSONDecodeError as e:
        raise CardError(f'{path} is not JSON: {e}') from e
    return check_results(results, str(path))


def check_results_match(
        results: Mapping[str, Any],
        arch: str,
        params: int,
        model_args: Optional[Mapping[str, Any]] = None,
) -> None:
    """Raise ``CardError`` unless ``results`` describe ``arch`` with ``params`` parameters (and ``model_args``)."""
    if results['model'] != arch or results['params'] != params:
        raise CardError(
            f"the results describe {results['model']} with {results['params']:,} parameters, the weights are "
            f"{arch} with {params:,}; give the results file of these weights")
    differ = {
        k: v for k, v in results.get('model_args', {}).items()
        if k in (model_args or {}) and model_args[k] != v}
    if differ:
        raise CardError(f'the results have model_args {differ}, the weights {dict(model_args)}')


def _size(img_size: Union[int, List[int]]) -> str:
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    return f'{h} x {w}'


def _bullets(items: Mapping[str, Any], indent: str = '  ') -> str:
    return '\n'.join(f'{indent}- {k}: {v}' for k, v in items.items())


def _front_matter(info: Mapping[str, Any], name: str) -> str:
    meta: Dict[str, Any] = {
        'tags': ['image-classification', 'timm', 'timm-sae'],
        'library_name': 'timm',
        'pipeline_tag': 'image-classification',
        'license': info.get('license', 'apache-2.0'),
    }
    if 'dataset' in info:
        dataset = info['dataset']
        meta['datasets'] = [dataset['id']]
        meta['model-index'] = [{'name': name, 'results': [{
            'task': {'type': 'image-classification', 'name': 'Image Classification'},
            'dataset': {'name': dataset['name'], 'type': dataset['id'], 'split': dataset['split']},
            'metrics': [
                {'type': METRIC_TYPES.get(k, (k, k))[0], 'value': v, 'name': METRIC_TYPES.get(k, (k, k))[1]}
                for k, v in info['metrics'].items()],
        }]}]
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)


def _details(info: Mapping[str, Any]) -> str:
    arch, in_chans = info['model'], info.get('in_chans', 3)
    lines = [
        '- **Model Type:** Image classification / feature backbone',
        f'- **Architecture:** `{arch}`, the SaE twin of timm\'s `{se_twin(arch)}`',
    ]
    if info.get('model_args'):
        lines += ['- **Model arguments:**', _bullets(info['model_args'])]
    lines += [
        '- **Model Stats:**',
        f"  - Params (M): {info['params'] / 1e6:.2f} ({info['params']:,} parameters)",
        f"  - GMACs: {info['gmacs']}",
        f"  - Image size: {_size(info['img_size'])}, {in_chans} channel{'s' if in_chans != 1 else ''}",
    ]
    if 'num_classes' in info:
        lines.append(f"  - Classes: {info['num_classes']}")
    lines += ['- **Papers:**', f'  - {PAPER}']
    if 'dataset' in info:
        lines.append(f"- **Dataset:** {info['dataset']['name']} (`{info['dataset']['id']}`)")
    if 'recipe' in info:
        lines += ['- **Training recipe:**', _bullets(info['recipe'])]
    lines.append('- **Library:** timm-sae on timm: https://github.com/huggingface/pytorch-image-models')
    return '\n'.join(lines)


def _results(info: Mapping[str, Any], repo_id: str) -> str:
    if 'metrics' not in info:
        return (
            'No results recorded for these weights yet. Measure them (timm\'s validate.py runs with the SaE models '
            f'registered as `python -m timm_sae.run validate.py --model hf-hub:{repo_id} ...`), write a results '
            'file (schema in `timm_sae/cards.py`) and export again with `--card-results`.')
    dataset = info['dataset']
    versions = ', '.join(f'{k} {v}' for k, v in info['versions'].items())
    rows = '\n'.join(
        f'| {METRIC_TYPES.get(k, (k, k))[1]} | {v} |' for k, v in info['metrics'].items())
    return (
        f"Measured on {dataset['name']} (`{dataset['id']}`, {dataset['split']} split) at "
        f"{_size(info['img_size'])}, on {info['hardware']} with {versions}:\n\n"
        f'| metric | value |\n|---|---:|\n{rows}\n\n'
        f"Command:\n```bash\n{info['command']}\n```")


def render_card(info: Mapping[str, Any], name: Optional[str] = None, folder: Optional[str] = None) -> str:
    """The model card (README.md) of a results file.

    ``info`` is a results file, or for an export without one only ``model``, ``params``, ``gmacs``,
    ``img_size`` and any optional keys. ``name`` (the repository name) defaults to ``<model>.<tag>``,
    ``folder`` (the export folder in the push command) to ``exports/<name>``.
    """
    name = name or f"{info['model']}.{info['tag']}"
    repo_id = info.get('repo_id', f'{HUB_ORG}/{name}')
    folder = folder or f'exports/{name}'
    publish = f'timm-sae push {folder} --repo-id {repo_id}'
    publish_intro = 'The weights go to the Hub with'
    if 'tag' in info:
        publish = (
            f"timm-sae export {info.get('checkpoint', 'CHECKPOINT')} {folder} "
            f"--card-results hub_cards/{name}/{RESULTS_NAME}\n{publish}")
        publish_intro = (
            f'This card is rendered by `timm-sae card hub_cards/{name}` from its results file; '
            f'the weights go to the Hub with')
    description = (
        f"A Squeeze aggregated Excitation (SaE) {info['model']} image classification model"
        + (f", trained on {info['dataset']['name']}." if 'dataset' in info else '.'))
    return TEMPLATE.substitute(
        front_matter=_front_matter(info, name),
        name=name,
        description=description,
        details=_details(info),
        pil_mode='L' if info.get('in_chans', 3) == 1 else 'RGB',
        model_id=f'hf-hub:{repo_id}',
        topk=min(5, info.get('num_classes', 5)),
        results=_results(info, repo_id),
        publish_intro=publish_intro,
        publish=publish,
        citation=CITATION,
        timm_citation=TIMM_CITATION,
    )


def write_card(folder: PathLike) -> Path:
    """Render ``folder/results.json`` into ``folder/README.md``; the folder must be named ``<model>.<tag>``."""
    folder = Path(folder)
    results = load_results(folder / RESULTS_NAME)
    name = f"{results['model']}.{results['tag']}"
    if folder.name != name:
        raise CardError(f'{folder} holds the results of {name}; name the folder {name}')
    path = folder / CARD_NAME
    path.write_text(render_card(results), encoding='utf-8')
    return path


def registered_cfgs() -> Dict[str, Dict[str, Any]]:
    """The pretrained cfgs of every registered SaE ``<arch>.<tag>``."""
    return {
        name: timm.models.get_pretrained_cfg(name).to_dict()
        for name in timm.list_models(module='sae_resnet', include_tags=True)}


def check_cards(cfgs: Mapping[str, Mapping[str, Any]], cards_dir: PathLike) -> List[str]:
    """Problems with the cards of the tags in ``cfgs`` (``registered_cfgs()``) and the folders in ``cards_dir``.

    Every tag but ``untrained`` needs ``hf_hub_id`` ``<HUB_ORG>/<arch>.<tag>`` and a card folder; every
    card folder a valid results file, the right name and a README.md equal to a fresh render.
    """
    cards_dir = Path(cards_dir)
    problems = []
    for name, cfg in sorted(cfgs.items()):
        if name.endswith('.untrained'):
            continue
        if cfg.get('hf_hub_id') != f'{HUB_ORG}/{name}':
            problems.append(f"{name}: hf_hub_id is {cfg.get('hf_hub_id')!r}, expected '{HUB_ORG}/{name}'")
        if not (cards_dir / name / RESULTS_NAME).is_file():
            problems.append(f'{name}: no {cards_dir / name / RESULTS_NAME}; commit the card folder with the tag')
    folders = sorted(p for p in cards_dir.iterdir() if p.is_dir()) if cards_dir.is_dir() else []
    for folder in folders:
        try:
            results = load_results(folder / RESULTS_NAME)
        except CardError as e:
            problems.append(str(e))
            continue
        name = f"{results['model']}.{results['tag']}"
        card = folder / CARD_NAME
        if folder.name != name:
            problems.append(f'{folder} holds the results of {name}; name the folder {name}')
        elif not card.is_file() or card.read_text(encoding='utf-8') != render_card(results):
            problems.append(f'{card} is not the render of its results file; run timm-sae card {folder}')
    return problems
