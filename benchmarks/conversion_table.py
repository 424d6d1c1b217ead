"""Tables of the registered conversion tags, with each source's ImageNet top-1 as timm reports it.

    python benchmarks/conversion_table.py --doc docs/pretrained.md

Writes every tag to ``results/conversion_tags.md`` and, with --doc, the default tag of each architecture to
the doc's "conversions" section.

Rows come from timm's registry (``timm.list_pretrained('sae*')`` after ``import timm_sae``); the top-1 of
each source comes from ``sources/results-imagenet.csv``, rows of timm's own results file (see
``sources/README.md`` for where from). Those are timm's figures for the source weights: the converted models
compute the same function, but the table does not claim measurements of ours.
"""
import argparse
import csv
import sys
from pathlib import Path
from typing import Dict, List, Optional

# run as a file (python benchmarks/conversion_table.py): import the package from the repository
if __package__ in (None, ''):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import timm
from timm.models import get_pretrained_cfg

import timm_sae  # noqa: F401  (registers the SaE family and its conversion tags)
from benchmarks.common import REPO_ROOT, RESULTS_DIR, update_doc_section
from timm_sae.sae_resnet import is_non_commercial, loads_se_weights

RESULTS = REPO_ROOT / 'benchmarks' / 'sources' / 'results-imagenet.csv'
ALL_TAGS = RESULTS_DIR / 'conversion_tags.md'


def timm_top1(path: Path = RESULTS) -> Dict[str, dict]:
    """timm's ImageNet-1k validation rows by model name (``arch.tag``)."""
    with path.open(newline='') as f:
        return {row['model']: row for row in csv.DictReader(f)}


def converted_archs() -> List[str]:
    """The SaE architectures with conversion tags, in timm's order."""
    tagged = {name.split('.')[0] for name in timm.list_pretrained('sae*')}
    return [arch for arch in timm.list_models('sae*') if arch in tagged]


def table(results: Dict[str, dict], defaults_only: bool = False) -> List[str]:
    """Markdown rows: one registered conversion tag a row, the default tag of each architecture first."""
    lines = [
        '| SaE tag | source weights (timm) | gate built | license | train / test size | source top-1 (timm) '
        '| at size |',
        '|---|---|---|---|---|---:|---:|',
    ]
    for arch in converted_archs():
        default = get_pretrained_cfg(arch).tag
        tags = sorted(timm.list_pretrained(f'{arch}.*'), key=lambda name: name != f'{arch}.{default}')
        tags = tags[:1] if defaults_only else tags
        for name in tags:
            cfg = get_pretrained_cfg(name)
            source = cfg.hf_hub_id.split('/', 1)[1]
            row: Optional[dict] = results.get(source)
            size = f'{cfg.input_size[-1]}' + (f' / {cfg.test_input_size[-1]}' if cfg.test_input_size else '')
            top1 = f"{float(row['top1']):.2f}" if row else '-'
            at = row['img_size'] if row else '-'
            label = f'`{name}`' + (' (default)' if name == f'{arch}.{default}' else '')
            gate = 'x * s (SE source)' if loads_se_weights(arch, vars(cfg)) else 'x * (1 + s)'
            license = (cfg.license or '-') + (' (non-commercial)' if is_non_commercial(cfg.license) else '')
            lines.append(f'| {label} | [`{source}`](https://huggingface.co/{cfg.hf_hub_id}) | {gate} | {license} '
                         f'| {size} | {top1} | {at} |')
    return lines


def summary(results: Dict[str, dict]) -> str:
    """What the tables hold and where their figures come from."""
    tags = timm.list_pretrained('sae*')
    known = sum(get_pretrained_cfg(name).hf_hub_id.split('/', 1)[1] in results for name in tags)
    se = sum(loads_se_weights(name.split('.')[0], vars(get_pretrained_cfg(name))) for name in tags)
    return (
        f'{len(tags)} tags over {len(converted_archs())} architectures (timm {timm.__version__}): {len(tags) - se} of '
        f'plain ResNet weights, which load into SaE\'s residual gate x * (1 + s), and {se} of SE-ResNet weights, which '
        f'load into the plain gate x * s (`sae_residual=False`, the only gate they convert into exactly). '
        f'Source top-1: '
        f'timm\'s ImageNet-1k validation figure for the source weights, from timm\'s `results/results-imagenet.csv` '
        f'(`benchmarks/sources/`), at its evaluation size; {known} of the {len(tags)} sources are in that file. '
        'They are timm\'s measurements of the sources, not ours of the conversions (which compute the same function).')


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--doc', type=Path, help='also rewrite the "conversions" section of this doc (docs/pretrained.md)')
    parser.add_argument('--out', type=Path, default=ALL_TAGS, help='the table of every tag (default %(default)s)')
    args = parser.parse_args(argv)
    results = timm_top1()
    args.out.write_text('\n'.join([
        '# SaE conversion tags', '', '`python benchmarks/conversion_table.py --doc docs/pretrained.md`', '',
        summary(results), '', *table(results)]) + '\n')
    print(f'wrote {args.out}')
    if args.doc:
        body = '\n'.join([
            summary(results) + ' The default tag of each architecture (what `pretrained=True` loads); every tag: '
            '`benchmarks/results/conversion_tags.md`.', '', *table(results, defaults_only=True)])
        update_doc_section(args.doc, 'conversions', body, 'benchmarks/conversion_table.py')


if __name__ == '__main__':
    main()
