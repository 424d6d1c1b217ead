"""Markdown table and plot of the Fashion-MNIST accuracy results written by benchmarks/accuracy.py.

    python benchmarks/accuracy_report.py [--results benchmarks/results/accuracy.json] [--out-dir benchmarks/results]
    python benchmarks/accuracy_report.py --doc docs/results.md     # also the doc's "accuracy" section

Writes ``accuracy.md`` (mean +- std over seeds per configuration, the difference to seresnet18 with a
95% Welch t interval, the study's configurations not run yet, missing runs, protocol, versions, hardware,
commands) and ``accuracy.png`` (test top-1 per epoch of the main models; test top-1 against SaE
cardinality; test top-1 of the placement and branch-width configurations once they have runs).
"""
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as a file (python benchmarks/accuracy_report.py): import the package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.accuracy import CONFIGS, PATHS, PLACEMENT_AND_WIDTH
from benchmarks.report import (
    COLUMNS,
    appendix,
    delta_column,
    header,
    kwargs_text,
    markdown_table,
    plot_band,
    provenance,
    report_command,
    save_figure,
)
from benchmarks.stats import CAVEATS, CONFIDENCE, group_runs, reported_top1, verdict
from benchmarks.sweep import as_json

REFERENCE = 'seresnet18'
MAIN_MODELS = ('resnet18', 'seresnet18', 'saeresnet18', 'resnet18_eca', 'resnet18_cbam')
# the verdicts: each pair (configuration, reference) with runs on both sides gets one sentence
COMPARISONS = (('saeresnet18', REFERENCE), ('saeresnet18', 'resnet18'), (REFERENCE, 'resnet18'),
               *((config, reference) for config in PLACEMENT_AND_WIDTH for reference in ('saeresnet18', REFERENCE)))
CARDINALITY_KWARGS = {'sae_cardinality', 'sae_residual'}  # the configurations of the cardinality panel vary these only


def not_run(runs: Dict[str, List[Dict[str, Any]]]) -> Optional[str]:
    """The sentence naming the study's configurations that have no run in the results, None when all have."""
    names = [f'{config} ({kwargs_text(as_json(CONFIGS[config][1]))})' for config in CONFIGS if config not in runs]
    if not names:
        return None
    return (f'Not run yet: {", ".join(names)}. These configurations of `benchmarks/accuracy.py` have no run in the '
            f'results, so neither the table nor the verdicts say anything about them.')


def summary(results: Dict[str, Any]) -> List[str]:
    """The results table and what it says (also the doc's section)."""
    protocol = results['protocol']
    runs = group_runs(results, MAIN_MODELS)
    delta = delta_column(runs, lambda c: None if c == REFERENCE else REFERENCE, f'Δ vs {REFERENCE} [95% CI]')
    lines = [
        f'Test top-1 (%) of the checkpoint chosen by validation top-1, mean ± sample std over n seeds. '
        f'Δ vs {REFERENCE}: difference of mean test top-1 in points with a {CONFIDENCE:.0%} Welch t interval. '
        f'Params and GMACs at {"x".join(map(str, protocol["input_size"]))} input, 10 classes.',
        '',
        *markdown_table(runs, [*(COLUMNS[k] for k in ('configuration', 'model', 'kwargs', 'n', 'test_top1')), delta,
                               *(COLUMNS[k] for k in ('test_loss', 'best_val_top1', 'best_epoch', 'params', 'gmacs'))]),
    ]
    missing = not_run(runs)
    if missing:
        lines += ['', missing]
    sentences = [s for s in (verdict(name, runs, reference) for name, reference in COMPARISONS) if s]
    if sentences:
        lines += ['', '**What the numbers say**', '', *sentences, '', CAVEATS]
    return lines


def markdown(results: Dict[str, Any], source: str) -> str:
    """The report as markdown; ``source`` names the results file."""
    lines = [
        *header('Does SaE help? Fashion-MNIST, ResNet-18 family', 'benchmarks/accuracy_report.py', source, results,
                group_runs(results, MAIN_MODELS), 'configuration', f'; {results["protocol"]["epochs"]} epochs each'),
        *summary(results),
        '',
        *appendix(results),
    ]
    return '\n'.join(lines) + '\n'


def plot(results: Dict[str, Any], path: Path) -> None:
    """Test top-1 per epoch (mean, min-max band) of the main models; test top-1 vs cardinality; and, once they have
    runs, test top-1 of the placement and branch-width configurations beside saeresnet18."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = group_runs(results, MAIN_MODELS)
    variants = [config for config in PLACEMENT_AND_WIDTH if config in runs]
    fig, axes = plt.subplots(1, 3 if variants else 2, figsize=(19 if variants else 13, 5))
    left, right = axes[0], axes[1]
    for config in MAIN_MODELS:
        if config in runs:
            plot_band(left, [r['curve']['test_top1'] for r in runs[config]], config)
    left.set(xlabel='epoch', ylabel='test top-1 (%)', title='Test top-1 per epoch (mean, min-max over seeds)')
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.grid(alpha=0.3)
    left.legend()

    def points(residual: bool) -> List[Tuple[int, List[float]]]:
        found = []
        for rs in runs.values():
            kwargs = rs[0]['model_kwargs']
            if (rs[0]['model'] == 'saeresnet18' and set(kwargs) <= CARDINALITY_KWARGS
                    and kwargs.get('sae_residual', True) == residual):
                found.append((kwargs.get('sae_cardinality', 4), reported_top1(rs)))
        return sorted(found)

    for residual, style, shift, label in ((True, 'o-', 1., 'saeresnet18, x(1+s)'),
                                          (False, 's', 1.08, 'saeresnet18, x·s (no residual; drawn beside its k)')):
        pts = points(residual)
        if pts:
            right.errorbar([k * shift for k, _ in pts], [statistics.fmean(v) for _, v in pts],
                           yerr=[spread(v) for _, v in pts], fmt=style, capsize=4, label=label + ' (mean ± std)')
    reference_lines(right, runs)
    right.set_xscale('log', base=2)
    right.set_xticks([1, 2, 4, 8], labels=['1', '2', '4', '8'])
    right.set(xlabel='SaE cardinality k', ylabel='test top-1 (%)', title='Test top-1 vs cardinality')
    right.grid(alpha=0.3)
    right.legend()

    if variants:
        ax = axes[2]
        shown = [config for config in ('saeresnet18', *variants) if config in runs]
        values = [reported_top1(runs[config]) for config in shown]
        ax.errorbar(range(len(shown)), [statistics.fmean(v) for v in values], yerr=[spread(v) for v in values],
                    fmt='o', capsize=4, label='mean ± std')
        reference_lines(ax, runs)
        ax.set_xticks(range(len(shown)), labels=[f'{c}\n(n={len(runs[c])})' for c in shown], rotation=30, ha='right')
        ax.set(ylabel='test top-1 (%)', title='Placement (stages) and branch width (rd ratio)')
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path, results, f'Fashion-MNIST, {results["protocol"]["epochs"]} epochs')


def spread(values: Sequence[float]) -> float:
    """The sample standard deviation of ``values``, 0 for a single value (an error bar)."""
    return statistics.stdev(values) if len(values) > 1 else 0.


def reference_lines(ax: Any, runs: Dict[str, List[Dict[str, Any]]]) -> None:
    """Dashed lines at the mean test top-1 of seresnet18 and resnet18."""
    for config, color in (('seresnet18', 'tab:red'), ('resnet18', 'tab:gray')):
        if config in runs:
            values = reported_top1(runs[config])
            ax.axhline(statistics.fmean(values), color=color, linestyle='--', label=f'{config} (n={len(values)})')


def doc_summary(results: Dict[str, Any], source: str, plot_link: str) -> str:
    """The doc's section: where the figures come from, the summary and the plot."""
    runs_text = f'{len(results["runs"])} runs, {results["protocol"]["epochs"]} epochs each'
    return '\n'.join([provenance(results, source, runs_text), '', *summary(results), '',
                      f'![test accuracy per epoch and against cardinality]({plot_link})']) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> Tuple[Path, Path]:
    """Write accuracy.md and accuracy.png (and the doc's section with --doc); their paths."""
    return report_command(argv, __doc__.split('\n\n')[0], PATHS.results, 'benchmarks/accuracy.py', 'accuracy',
                          'accuracy', 'benchmarks/accuracy_report.py', markdown, plot, doc_summary)


if __name__ == '__main__':
    main()
