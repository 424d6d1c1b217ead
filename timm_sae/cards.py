"""Model cards of SaE weights: strict records (huggingface_hub's ``@strict`` dataclasses) and a card template.

A published tag's folder ``hub_cards/<arch>.<tag>/`` holds ``results.json`` (written by the benchmark that measured
the weights, schema ``Results``) and ``README.md``, its render (``timm-sae card``), which ``timm-sae export
--card-results`` puts in the Hub folder; the card shows every figure as the results file has it. An export without
results gets the card of an ``ExportInfo``; with a ``Source``, that of an exact conversion of timm's plain or SE
weights (``timm_sae.convert``): the source's function, SaE layers untrained, meant to be fine-tuned. The card is
``huggingface_hub.ModelCard.from_template`` of the package's ``card_template.md`` (Jinja2), its front matter a
``ModelCardData`` (license, datasets, ``base_model``, the ``model-index``), so the Hub reads back what it shows.
"""
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type, TypeVar, Union

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError

from .errors import CardError
from .sae_resnet import HUB_ORG, twins

__all__ = [
    'RESULTS_NAME', 'CARD_NAME', 'CardError', 'Dataset', 'Source', 'ExportInfo', 'Results', 'load_results',
    'check_results', 'check_results_match', 'render_card', 'export_card', 'write_card',
]

PathLike = Union[str, os.PathLike]

RESULTS_NAME = 'results.json'
CARD_NAME = 'README.md'
TEMPLATE = Path(__file__).with_name('card_template.md')

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
ARXIV_ID = re.compile(r'(?:arxiv:)?(\d{4}\.\d{4,5}(?:v\d+)?)', re.IGNORECASE)
Number = Union[int, float]


R = TypeVar('R')


def _record(cls: Type[R], data: Any, where: str) -> R:
    """The record ``cls`` of a parsed JSON object; ``CardError`` naming ``where`` and what is off the schema."""
    if not isinstance(data, dict):
        raise CardError(f'{where} must be a JSON object, got {type(data).__name__}')
    try:
        return cls(**data)
    except (TypeError, StrictDataclassError) as e:  # a missing or unknown key; which field is off, then what in it
        causes: List[BaseException] = [e]
        while causes[-1].__cause__ is not None:
            causes.append(causes[-1].__cause__)
        reason = ': '.join(str(c) for c in causes if not isinstance(c, StrictDataclassError))
        raise CardError(f'{where}: {reason.replace(f"{cls.__name__}.__init__() ", "")}; '
                        f'the schema is timm_sae.cards.{cls.__name__}') from None


@strict
@dataclass
class Dataset:
    """The data set of the metrics: Hub dataset ``id``, display ``name``, evaluated ``split``."""
    id: str
    name: str
    split: str


@strict
@dataclass
class Source:
    """The weights an export is an exact conversion of (``timm_sae.convert``): timm ``arch.tag`` or the checkpoint's
    file ``name``; ``kind`` ``'plain'`` (either gate) or ``'se'`` (the plain gate, ``sae_residual=False``); the
    source's Hub repository (linked, the card's ``base_model``), its ``license`` (carried over; ``None``: unknown),
    and the arXiv ids of its papers (``2110.00476`` or ``arXiv:2110.00476``).
    """
    name: str
    kind: Literal['plain', 'se']
    hf_hub_id: Optional[str] = None
    license: Optional[str] = None
    paper_ids: List[str] = field(default_factory=list)

    def validate_paper_ids(self) -> None:
        bad = [p for p in self.paper_ids if not ARXIV_ID.fullmatch(p)]
        if bad:
            raise ValueError(f'paper_ids must be arXiv ids such as 2110.00476 or arXiv:2110.00476, got {bad}')

    @classmethod
    def from_cfg(cls, name: str, kind: Literal['plain', 'se'], cfg: Dict[str, Any]) -> 'Source':
        """The source ``name`` with the Hub id, license and papers of its timm pretrained cfg (a dict)."""
        papers = cfg.get('paper_ids') or []
        return cls(name=name, kind=kind, hf_hub_id=cfg.get('hf_hub_id'), license=cfg.get('license'),
                   paper_ids=[papers] if isinstance(papers, str) else list(papers))


@dataclass(kw_only=True)
class _ModelStats:
    """What the card says about the model: architecture, size, input (an integer or [H, W]), entrypoint arguments."""
    model: str
    params: int
    gmacs: Number
    img_size: Union[int, List[int]]
    in_chans: int = 3
    num_classes: Optional[int] = None
    model_args: Dict[str, Any] = field(default_factory=dict)
    license: Optional[str] = None

    def validate_img_size(self) -> None:
        if isinstance(self.img_size, list) and len(self.img_size) != 2:
            raise ValueError(f'img_size must be an integer or [H, W], got {self.img_size}')


@strict
@dataclass(kw_only=True)
class ExportInfo(_ModelStats):
    """An export without a results file: the model's stats, and the ``source`` if it is an exact conversion.

    ``license`` is the weights' license if known (e.g. inherited from the weights they were fine-tuned from),
    default apache-2.0; a conversion has its source's (``Source.license``).
    """
    source: Optional[Source] = None

    def validate_source(self) -> None:
        if self.source is not None and self.license is not None:
            raise ValueError(
                f'a conversion has the license of its source: give it as Source.license, not {self.license!r}')
        if self.source is not None and self.source.kind == 'se' and self.model_args.get('sae_residual', True):
            raise ValueError(
                f'{self.source.name} is an SE source: it converts exactly only into the plain gate, so the '
                f'model_args must hold sae_residual=False, not {self.model_args}')


@strict
@dataclass(kw_only=True)
class Results(_ModelStats):
    """A results file (``hub_cards/<model>.<tag>/results.json``): the measured weights and how they were measured.

    ``model`` and ``tag`` name the weights (the Hub repository is ``repo_id``, default ``<HUB_ORG>/<model>.<tag>``);
    ``dataset`` is where the ``metrics`` (name -> number, e.g. ``{"top1": 91.5, "loss": 0.24}``; top1 / top5 in %)
    were measured, at ``img_size`` (an integer or ``[H, W]``), on ``hardware`` with ``versions`` (package ->
    version), by ``command``; ``recipe`` (name -> value) is the training recipe. ``params`` must equal the exported
    model's and ``model_args`` (``sae_cardinality``, ...) agree with the export's; ``gmacs`` is of one image at
    ``img_size``; ``license`` defaults to apache-2.0; ``checkpoint`` (shown in the export command) is the file the
    weights were exported from. hub_cards/README.md has the table of the keys.
    """
    tag: str
    dataset: Dataset
    metrics: Dict[str, Number]
    recipe: Dict[str, Any]
    command: str
    versions: Dict[str, str]
    hardware: str
    repo_id: Optional[str] = None
    checkpoint: Optional[str] = None

    def validate_metrics(self) -> None:
        if not self.metrics:
            raise ValueError('metrics must name at least one metric, e.g. {"top1": 91.5}')

    @property
    def name(self) -> str:
        """The weights' name, ``<model>.<tag>``: the card folder and the Hub repository name."""
        return f'{self.model}.{self.tag}'


def check_results(results: Any, where: str = 'results') -> Results:
    """The ``Results`` of a parsed results file, or ``CardError`` naming ``where`` and what to fix."""
    if isinstance(results, dict) and isinstance(results.get('dataset'), dict):
        results = {**results, 'dataset': _record(Dataset, results['dataset'], f'{where}: dataset')}
    return _record(Results, results, where)


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


def check_results_match(results: Results, arch: str, params: int, model_args: Optional[Dict[str, Any]] = None) -> None:
    """Raise ``CardError`` unless ``results`` describe ``arch`` with ``params`` parameters (and ``model_args``)."""
    if results.model != arch or results.params != params:
        raise CardError(
            f'the results describe {results.model} with {results.params:,} parameters, the weights are '
            f'{arch} with {params:,}; give the results file of these weights')
    model_args = json.loads(json.dumps(model_args or {}))  # as a results file holds them: tuples are lists
    differ = {k: v for k, v in results.model_args.items() if k in model_args and model_args[k] != v}
    if differ:
        raise CardError(f'the results have model_args {differ}, the weights {dict(model_args)}')


def _card_data(info: Union[Results, ExportInfo], name: str) -> ModelCardData:
    """The front matter: license, base model, and for results the data set and model-index."""
    source = getattr(info, 'source', None)
    license = (source.license or UNKNOWN_LICENSE) if source else info.license or DEFAULT_LICENSE
    meta: Dict[str, Any] = dict(
        library_name='timm', license=license, pipeline_tag='image-classification', tags=list(TAGS),
        base_model=source.hf_hub_id if source else None)
    if isinstance(info, Results):
        dataset = info.dataset
        meta.update(datasets=[dataset.id], model_name=name, eval_results=[
            EvalResult(
                task_type='image-classification', task_name='Image Classification', dataset_type=dataset.id,
                dataset_name=dataset.name, dataset_split=dataset.split, metric_name=METRIC_TYPES.get(k, (k, k))[1],
                metric_type=METRIC_TYPES.get(k, (k, k))[0], metric_value=v)
            for k, v in info.metrics.items()])
    return ModelCardData(**meta)


def render_card(info: Union[Results, ExportInfo], name: Optional[str] = None, folder: Optional[str] = None) -> str:
    """The model card (README.md) of a results file or an export: ``card_template.md`` through ``ModelCard``.

    ``name`` (the repository name) defaults to ``<model>.<tag>`` for results and ``<model>`` for an export,
    ``folder`` (the export folder in the push command) to ``exports/<name>``.
    """
    results = info if isinstance(info, Results) else None
    source = getattr(info, 'source', None)
    name = name or (results.name if results else info.model)
    h, w = (info.img_size, info.img_size) if isinstance(info.img_size, int) else info.img_size
    names = twins(info.model)
    card = ModelCard.from_template(
        _card_data(info, name), template_path=str(TEMPLATE), info=info, results=results, source=source, name=name,
        repo_id=(results and results.repo_id) or f'{HUB_ORG}/{name}', folder=folder or f'exports/{name}',
        twin=names.se or names.plain, img_size=f'{h} x {w}', residual=info.model_args.get('sae_residual', True),
        metric_names={k: v[1] for k, v in METRIC_TYPES.items()},
        source_link=source and (
            f'[`{source.name}`](https://huggingface.co/{source.hf_hub_id})' if source.hf_hub_id
            else f'`{source.name}`'),
        source_papers=[p.split(':')[-1] for p in source.paper_ids] if source else [])  # arXiv ids, checked
    return str(card)


def export_card(
        model: str, params: int, gmacs: float, input_size: Tuple[int, ...], num_classes: int,
        model_args: Dict[str, Any], folder: Path, results: Union[None, PathLike, Results] = None,
        source: Optional[Source] = None, license: Optional[str] = None) -> Tuple[str, Optional[Results]]:
    """The card of an export to ``folder``, and its results if any.

    ``results`` (a ``Results`` or a results file, checked against the model) give the card of a published tag;
    otherwise the card is that of an ``ExportInfo`` (an exact conversion of ``source``, or weights of ``license``).
    """
    if results is not None:
        results = results if isinstance(results, Results) else load_results(results)
        check_results_match(results, model, params, model_args)
        return render_card(results), results  # the card hub_cards/<arch>.<tag>/README.md holds
    info = ExportInfo(
        model=model, params=params, img_size=list(input_size[1:]), gmacs=round(gmacs, 3), in_chans=input_size[0],
        num_classes=num_classes, model_args=model_args, source=source, license=None if source else license)
    return render_card(info, name=folder.name, folder=folder.name if folder.is_absolute() else str(folder)), None


def write_card(folder: PathLike) -> Path:
    """Render ``folder/results.json`` into ``folder/README.md``; the folder must be named ``<model>.<tag>``."""
    folder = Path(folder)
    results = load_results(folder / RESULTS_NAME)
    if folder.name != results.name:
        raise CardError(f'{folder} holds the results of {results.name}; name the folder {results.name}')
    path = folder / CARD_NAME
    path.write_text(render_card(results), encoding='utf-8')
    return path
