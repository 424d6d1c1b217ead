"""Model cards of SaE weights, rendered through huggingface_hub's card API from typed records.

Each published tag has a folder ``hub_cards/<arch>.<tag>/`` holding ``results.json`` (written by the
benchmark that measured the weights; its schema is ``Results``) and ``README.md``, its render by
``render_card`` (``timm-sae card hub_cards/<arch>.<tag>``), which is what ``timm-sae export
--card-results`` puts in the Hub folder. The card shows every figure exactly as the results file has it.

An export without a results file gets the card of an ``ExportInfo`` (what the model is); with a
``Source`` that card describes an exact conversion of timm's plain or SE weights (``timm_sae.convert``):
the source's function, SaE layers untrained, meant to be fine-tuned.

The front matter is a ``huggingface_hub.ModelCardData`` (license, datasets, ``base_model``, and the
``model-index`` from one ``EvalResult`` a metric), and the card is what ``huggingface_hub.ModelCard``
serialises, so the Hub reads back exactly the metadata rendered here.
"""
import dataclasses
import json
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import (
    Any, Dict, List, Literal, Mapping, Optional, Tuple, Type, TypeVar, Union, get_args, get_origin, get_type_hints)

import timm
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from timm.models import split_model_name_tag

from .convert import conversion_tag
from .measure import se_twin
from .sae_resnet import HUB_ORG

__all__ = [
    'RESULTS_NAME', 'CARD_NAME', 'CardError', 'Dataset', 'Source', 'ExportInfo', 'Results', 'load_results',
    'check_results', 'check_results_match', 'render_card', 'write_card', 'registered_cfgs', 'check_cards',
]

PathLike = Union[str, os.PathLike]

RESULTS_NAME = 'results.json'
CARD_NAME = 'README.md'

TAGS = ['image-classification', 'timm', 'timm-sae']
DEFAULT_LICENSE = 'apache-2.0'
# license of a conversion whose source records none (the Hub's id for "see the card")
UNKNOWN_LICENSE = 'other'
# metric name -> (model-index metric type, display name)
METRIC_TYPES = {
    'top1': ('accuracy', 'Top-1 accuracy'),
    'top5': ('top_5_accuracy', 'Top-5 accuracy'),
    'loss': ('loss', 'Loss'),
}
METRICS_KIND = 'an object mapping metric names to numbers, e.g. {"top1": 91.5}'
ARXIV_ID = re.compile(r'(?:arxiv:)?(\d{4}\.\d{4,5}(?:v\d+)?)', re.IGNORECASE)

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

# the card below the front matter
TEMPLATE = Template('''\
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
    """A results file, card record or card folder that does not hold to the schema; the message says what to fix."""


class _Mismatch(Exception):
    """A value that does not fit a type hint (turned into a ``CardError`` naming the key)."""


def _conform(value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` says (JSON lists -> tuples, objects -> records), else ``_Mismatch``.

    Numbers (``float``) take ints and floats as they are, so a figure keeps the form the results file gives it;
    ``bool`` is never an integer or a number.
    """
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            try:
                return hint(**value)
            except (TypeError, CardError):
                pass
    elif origin in (Union, types.UnionType):
        for arg in args:
            try:
                return _conform(value, arg)
            except _Mismatch:
                pass
    elif origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
    elif origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {k: _conform(v, args[1]) for k, v in value.items()}
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            hints = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
            if len(hints) == len(value):
                return tuple(_conform(v, h) for v, h in zip(value, hints))
    elif hint is type(None):
        if value is None:
            return value
    elif not isinstance(value, bool) and isinstance(value, (int, float) if hint is float else hint):
        return value
    raise _Mismatch


_PLURAL = {str: 'strings', int: 'integers', float: 'numbers'}


def _kind(hint: Any) -> str:
    """What a value of type ``hint`` is, in the words of an error message."""
    origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint):
        names = [f.name for f in dataclasses.fields(hint)]
        return f'an object with keys {", ".join(names)} (timm_sae.cards.{hint.__name__})'
    if origin in (Union, types.UnionType):
        return ' or '.join(_kind(a) for a in args)
    if origin is Literal:
        return ' or '.join(repr(a) for a in args)
    if origin is dict:
        return 'an object' if args[1] is Any else f'an object mapping names to {_PLURAL[args[1]]}'
    if origin is tuple:
        count = 'any number of' if args[-1] is Ellipsis else str(len(args))
        return f'a list of {count} {_PLURAL[args[0]]}'
    return {str: 'a string', int: 'an integer', float: 'a number', type(None): 'null'}[hint]


R = TypeVar('R', bound='_Record')


class _Record:
    """A frozen dataclass whose fields are checked against their type hints (and normalised) when it is made."""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                object.__setattr__(self, f.name, _conform(value, hints[f.name]))
            except _Mismatch:
                raise CardError(
                    f"{f.name} must be {f.metadata.get('kind') or _kind(hints[f.name])}, got {value!r}") from None

    @classmethod
    def parse(cls: Type[R], data: Any, where: str) -> R:
        """The record of a JSON object; ``CardError`` naming ``where`` and the key for anything off the schema."""
        if not isinstance(data, dict):
            raise CardError(f'{where} must be a JSON object, got {type(data).__name__}')
        fields = dataclasses.fields(cls)
        names = [f.name for f in fields]
        missing = [
            f.name for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data]
        unknown = sorted(k for k in data if k not in names)
        if missing or unknown:
            raise CardError(
                f'{where}: missing keys {missing}, unknown keys {unknown}; '
                f'the schema is timm_sae.cards.{cls.__name__}')
        try:
            return cls(**data)
        except CardError as e:
            raise CardError(f'{where}: {e}') from None


@dataclass(frozen=True)
class Dataset(_Record):
    """The data set of the metrics: Hub dataset ``id``, display ``name``, evaluated ``split``."""
    id: str
    name: str
    split: str


@dataclass(frozen=True)
class Source(_Record):
    """The weights an export is an exact conversion of (``timm_sae.convert``).

    Attributes:
        name: timm ``arch.tag`` (e.g. ``resnet50.a1_in1k``) or the checkpoint file's name.
        kind: ``'plain'`` (a ResNet: either gate) or ``'se'`` (an SE-ResNet: the plain gate, ``sae_residual=False``).
        hf_hub_id: the source's Hub repository: linked, and the card's ``base_model``.
        license: the source's license, carried over to the conversion; ``None`` if unknown.
        paper_ids: arXiv ids of the source weights' papers (``2110.00476`` or ``arXiv:2110.00476``).
    """
    name: str
    kind: Literal['plain', 'se']
    hf_hub_id: Optional[str] = None
    license: Optional[str] = None
    paper_ids: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [p for p in self.paper_ids if not ARXIV_ID.fullmatch(p)]
        if bad:
            raise CardError(f'paper_ids must be arXiv ids such as 2110.00476 or arXiv:2110.00476, got {bad}')

    @classmethod
    def from_cfg(cls, name: str, kind: str, cfg: Mapping[str, Any]) -> 'Source':
        """The source ``name`` with the Hub id, license and papers of its timm pretrained cfg (a dict)."""
        papers = cfg.get('paper_ids') or ()
        return cls(
            name=name, kind=kind, hf_hub_id=cfg.get('hf_hub_id'), license=cfg.get('license'),
            paper_ids=(papers,) if isinstance(papers, str) else tuple(papers))

    @property
    def link(self) -> str:
        """The name in markdown, linked to its Hub repository when it has one."""
        return f'[`{self.name}`](https://huggingface.co/{self.hf_hub_id})' if self.hf_hub_id else f'`{self.name}`'

    @property
    def paper_urls(self) -> List[str]:
        return [f'https://arxiv.org/abs/{ARXIV_ID.fullmatch(p).group(1)}' for p in self.paper_ids]


@dataclass(frozen=True, kw_only=True)
class _ModelStats(_Record):
    """What the card says about the model: architecture, size, input, entrypoint arguments."""
    model: str
    params: int
    gmacs: float
    img_size: Union[int, Tuple[int, int]]
    in_chans: int = 3
    num_classes: Optional[int] = None
    model_args: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ExportInfo(_ModelStats):
    """An export without a results file: the model's stats, and the ``source`` if it is an exact conversion.

    ``license`` is the weights' license if known (e.g. inherited from the weights they were fine-tuned from),
    default apache-2.0; a conversion has its source's (``Source.license``).
    """
    source: Optional[Source] = None
    license: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source is not None and self.license is not None:
            raise CardError(
                f'a conversion has the license of its source: give it as Source.license, not {self.license!r}')
        if self.source is not None and self.source.kind == 'se' and self.model_args.get('sae_residual', True):
            raise CardError(
                f'{self.source.name} is an SE source: it converts exactly only into the plain gate, so the '
                f'model_args must hold sae_residual=False, not {self.model_args}')


@dataclass(frozen=True, kw_only=True)
class Results(_ModelStats):
    """A results file (``hub_cards/<model>.<tag>/results.json``): the measured weights and how they were measured.

    Attributes:
        model: architecture, e.g. ``saeresnet18``.
        tag: weight tag, e.g. ``fmnist``; the Hub repository is ``<HUB_ORG>/<model>.<tag>``.
        dataset: where the metrics were measured.
        metrics: metric name -> number, e.g. ``{"top1": 91.5, "top5": 99.8, "loss": 0.24}``; top1 / top5 in %.
        params: parameter count (must equal the exported model's).
        gmacs: GMACs of one image at ``img_size``.
        img_size: evaluation input size, an integer or ``[H, W]``.
        recipe: training recipe, name -> value (epochs, optimizer, lr, batch size, ...).
        command: the command that produced the weights and these figures.
        versions: package -> version (timm, torch, timm_sae, ...).
        hardware: where it ran, e.g. ``2-core CPU``.
        repo_id: Hub repository, default ``<HUB_ORG>/<model>.<tag>``.
        in_chans: input channels.
        num_classes: classifier size.
        model_args: entrypoint arguments of the weights (``sae_cardinality``, ...); checked against the export.
        license: the weights' license, default apache-2.0.
        checkpoint: the checkpoint the weights were exported from (shown in the export command).
    """
    tag: str
    dataset: Dataset
    metrics: Dict[str, float] = field(metadata={'kind': METRICS_KIND})
    recipe: Dict[str, Any]
    command: str
    versions: Dict[str, str]
    hardware: str
    repo_id: Optional[str] = None
    license: Optional[str] = None
    checkpoint: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.metrics:
            raise CardError(f'metrics must be {METRICS_KIND}, got {{}}')

    @property
    def name(self) -> str:
        """The weights' name, ``<model>.<tag>``: the card folder and the Hub repository name."""
        return f'{self.model}.{self.tag}'


CardInfo = Union[Results, ExportInfo]


def check_results(results: Any, where: str = 'results') -> Results:
    """The ``Results`` of a parsed results file, or ``CardError`` naming ``where`` and what to fix."""
    return Results.parse(results, where)


def load_results(path: PathLike) -> Results:
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
        results: Results,
        arch: str,
        params: int,
        model_args: Optional[Mapping[str, Any]] = None,
) -> None:
    """Raise ``CardError`` unless ``results`` describe ``arch`` with ``params`` parameters (and ``model_args``)."""
    if results.model != arch or results.params != params:
        raise CardError(
            f'the results describe {results.model} with {results.params:,} parameters, the weights are '
            f'{arch} with {params:,}; give the results file of these weights')
    differ = {k: v for k, v in results.model_args.items() if k in (model_args or {}) and model_args[k] != v}
    if differ:
        raise CardError(f'the results have model_args {differ}, the weights {dict(model_args)}')


def _size(img_size: Union[int, Tuple[int, int]]) -> str:
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    return f'{h} x {w}'


def _bullets(items: Mapping[str, Any], indent: str = '  ') -> str:
    return '\n'.join(f'{indent}- {k}: {v}' for k, v in items.items())


def _metric(name: str) -> Tuple[str, str]:
    """(model-index metric type, display name) of a results file's metric."""
    return METRIC_TYPES.get(name, (name, name))


def _license(info: CardInfo) -> str:
    if isinstance(info, Results) or info.source is None:
        return info.license or DEFAULT_LICENSE
    return info.source.license or UNKNOWN_LICENSE


def _card_data(info: CardInfo, name: str) -> ModelCardData:
    """The front matter: license, base model, and for results the data set and model-index."""
    meta: Dict[str, Any] = dict(
        library_name='timm', license=_license(info), pipeline_tag='image-classification', tags=list(TAGS))
    if isinstance(info, ExportInfo) and info.source is not None:
        meta['base_model'] = info.source.hf_hub_id
    if isinstance(info, Results):
        dataset = info.dataset
        meta.update(datasets=[dataset.id], model_name=name, eval_results=[
            EvalResult(
                task_type='image-classification', task_name='Image Classification', dataset_type=dataset.id,
                dataset_name=dataset.name, dataset_split=dataset.split, metric_type=_metric(k)[0], metric_value=v,
                metric_name=_metric(k)[1])
            for k, v in info.metrics.items()])
    return ModelCardData(**meta)


def _gate(info: ExportInfo) -> Tuple[str, str]:
    """(gate formula, its constant value at s = 1/2) of the export's SaE layers."""
    return ('1 + s', '3/2') if info.model_args.get('sae_residual', True) else ('s', '1/2')


def _description(info: CardInfo, repo_id: str) -> str:
    if isinstance(info, Results):
        return (f'A Squeeze aggregated Excitation (SaE) {info.model} image classification model, '
                f'trained on {info.dataset.name}.')
    if info.source is None:
        return f'A Squeeze aggregated Excitation (SaE) {info.model} image classification model.'
    source = info.source
    if source.kind == 'plain':
        formula, value = _gate(info)
        how = (
            f'Each SaE layer has excitation weight 0 and bias 0, so s = sigmoid(0) = 1/2 for every input and the '
            f'gate {formula} = {value} is a constant, divided out of the weight and bias of the BatchNorm before '
            'the SaE layer.')
    else:
        how = (
            "The SaE layers use SE's plain gate x * s (`sae_residual=False`). SE's reduction (C -> r) fills the first "
            "r rows of the branch matrix and SE's expansion (r -> C) the matching first r columns of the excitation, "
            "whose other columns are 0, so each SaE layer computes its SE layer's gate; the other branch rows keep "
            'their initialisation and act once fine-tuning moves their excitation columns off 0.')
    return (
        f'A Squeeze aggregated Excitation (SaE) {info.model} image classification model: an exact conversion of '
        f"the {'SE-ResNet' if source.kind == 'se' else 'plain ResNet'} weights {source.link}.\n\n"
        f'Its SaE layers are NOT trained yet: the model computes the function of `{source.name}` (exactly, up to '
        f'floating-point rounding). {how} '
        "The weights are meant to be fine-tuned, e.g. with timm's train.py:\n\n"
        f'```bash\npython train.py /path/to/dataset --device-modules timm_sae --model hf-hub:{repo_id} --pretrained\n'
        '```')


def _details(info: CardInfo) -> str:
    in_chans = info.in_chans
    lines = [
        '- **Model Type:** Image classification / feature backbone',
        f'- **Architecture:** `{info.model}`, the SaE twin of timm\'s `{se_twin(info.model)}`',
    ]
    if info.model_args:
        lines += ['- **Model arguments:**', _bullets(info.model_args)]
    lines += [
        '- **Model Stats:**',
        f'  - Params (M): {info.params / 1e6:.2f} ({info.params:,} parameters)',
        f'  - GMACs: {info.gmacs}',
        f"  - Image size: {_size(info.img_size)}, {in_chans} channel{'s' if in_chans != 1 else ''}",
    ]
    if info.num_classes is not None:
        lines.append(f'  - Classes: {info.num_classes}')
    source = info.source if isinstance(info, ExportInfo) else None
    if source is not None:
        lines.append(f'- **Source weights:** {source.link}, converted exactly; the SaE layers are untrained')
        lines.append(
            f'- **License:** {source.license}, the source\'s: it carries over to these weights derived from it'
            if source.license else
            f'- **License:** not recorded for `{source.name}` (front matter: {UNKNOWN_LICENSE}); these weights are '
            'derived from it and carry its terms: check them before use')
    lines += ['- **Papers:**', f'  - {PAPER}']
    if source is not None:
        lines += [f'  - `{source.name}`: {url}' for url in source.paper_urls]
    if isinstance(info, Results):
        lines += [
            f'- **Dataset:** {info.dataset.name} (`{info.dataset.id}`)',
            '- **Training recipe:**', _bullets(info.recipe)]
    lines.append('- **Library:** timm-sae on timm: https://github.com/huggingface/pytorch-image-models')
    return '\n'.join(lines)


def _results(info: CardInfo, repo_id: str) -> str:
    validate = f'`python -m timm_sae.run validate.py --model hf-hub:{repo_id} ...`'
    measure = 'write a results file (schema: `timm_sae.cards.Results`) and export again with `--card-results`.'
    if isinstance(info, ExportInfo) and info.source is not None:
        return (
            f'No results recorded for these weights: before fine-tuning they compute the function of '
            f'`{info.source.name}` and score what it scores. After fine-tuning, '
            f"measure the fine-tuned weights with timm's validate.py ({validate}) next to `{info.source.name}` "
            f'under the same protocol, {measure}')
    if isinstance(info, ExportInfo):
        return (
            'No results recorded for these weights yet. Measure them (timm\'s validate.py runs with the SaE models '
            f'registered as {validate}), {measure}')
    versions = ', '.join(f'{k} {v}' for k, v in info.versions.items())
    rows = '\n'.join(f'| {_metric(k)[1]} | {v} |' for k, v in info.metrics.items())
    return (
        f'Measured on {info.dataset.name} (`{info.dataset.id}`, {info.dataset.split} split) at '
        f'{_size(info.img_size)}, on {info.hardware} with {versions}:\n\n'
        f'| metric | value |\n|---|---:|\n{rows}\n\n'
        f'Command:\n```bash\n{info.command}\n```')


def render_card(
        info: Union[CardInfo, Mapping[str, Any]],
        name: Optional[str] = None,
        folder: Optional[str] = None,
) -> str:
    """The model card (README.md) of a results file or an export, as ``huggingface_hub.ModelCard`` writes it.

    ``info`` is ``Results`` or ``ExportInfo``, or a mapping of either's keys (a mapping with ``tag`` is a
    results file). ``name`` (the repository name) defaults to ``<model>.<tag>`` for results and ``<model>``
    for an export, ``folder`` (the export folder in the push command) to ``exports/<name>``.
    """
    if isinstance(info, Mapping):
        info = Results.parse(dict(info), 'results') if 'tag' in info else ExportInfo.parse(dict(info), 'export info')
    results = info if isinstance(info, Results) else None
    name = name or (results.name if results else info.model)
    repo_id = (results and results.repo_id) or f'{HUB_ORG}/{name}'
    folder = folder or f'exports/{name}'
    publish = f'timm-sae push {folder} --repo-id {repo_id}'
    publish_intro = 'The weights go to the Hub with'
    if results:
        publish = (
            f"timm-sae export {results.checkpoint or 'CHECKPOINT'} {folder} "
            f'--card-results hub_cards/{name}/{RESULTS_NAME}\n{publish}')
        publish_intro = (
            f'This card is rendered by `timm-sae card hub_cards/{name}` from its results file; '
            f'the weights go to the Hub with')
    body = TEMPLATE.substitute(
        name=name,
        description=_description(info, repo_id),
        details=_details(info),
        pil_mode='L' if info.in_chans == 1 else 'RGB',
        model_id=f'hf-hub:{repo_id}',
        topk=min(5, info.num_classes or 5),
        results=_results(info, repo_id),
        publish_intro=publish_intro,
        publish=publish,
        citation=CITATION,
        timm_citation=TIMM_CITATION,
    )
    return str(ModelCard(f'---\n{_card_data(info, name).to_yaml()}\n---\n{body}'))


def write_card(folder: PathLike) -> Path:
    """Render ``folder/results.json`` into ``folder/README.md``; the folder must be named ``<model>.<tag>``."""
    folder = Path(folder)
    results = load_results(folder / RESULTS_NAME)
    if folder.name != results.name:
        raise CardError(f'{folder} holds the results of {results.name}; name the folder {results.name}')
    path = folder / CARD_NAME
    path.write_text(render_card(results), encoding='utf-8')
    return path


def registered_cfgs() -> Dict[str, Dict[str, Any]]:
    """The pretrained cfgs of every registered SaE ``<arch>.<tag>``."""
    return {
        name: timm.models.get_pretrained_cfg(name).to_dict()
        for name in timm.list_models(module='sae_resnet', include_tags=True)}


def _is_conversion(name: str, cfg: Mapping[str, Any]) -> bool:
    """Whether the tag loads timm's own weights of another architecture, converted while loading."""
    source = (cfg.get('hf_hub_id') or '').partition('timm/')[2]
    return bool(source) and split_model_name_tag(name)[1] == conversion_tag(source)


def check_cards(cfgs: Mapping[str, Mapping[str, Any]], cards_dir: PathLike) -> List[str]:
    """Problems with the cards of the tags in ``cfgs`` (``registered_cfgs()``) and the folders in ``cards_dir``.

    Every tag but ``untrained`` and the exact conversions of timm's weights (``timm_sae.convert``, whose
    ``hf_hub_id`` is the source's ``timm/<arch>.<tag>``) needs ``hf_hub_id`` ``<HUB_ORG>/<arch>.<tag>`` and a
    card folder; every card folder a valid results file, the right name and a README.md equal to a fresh render.
    """
    cards_dir = Path(cards_dir)
    problems = []
    for name, cfg in sorted(cfgs.items()):
        if name.endswith('.untrained') or _is_conversion(name, cfg):
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
        card = folder / CARD_NAME
        if folder.name != results.name:
            problems.append(f'{folder} holds the results of {results.name}; name the folder {results.name}')
        elif not card.is_file() or card.read_text(encoding='utf-8') != render_card(results):
            problems.append(f'{card} is not the render of its results file; run timm-sae card {folder}')
    return problems
