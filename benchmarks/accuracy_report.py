"""Markdown table and plot of the Fashion-MNIST accuracy results written by benchmarks/accuracy.py.

    python benchmarks/accuracy_report.py [--results benchmarks/results/accuracy.json] [--out-dir benchmarks/results]
    python benchmarks/accuracy_report.py --doc docs/results.md     # also the doc's "accuracy" section

Writes ``accuracy.md`` (mean +- std over seeds per configuration, the difference to seresnet18 with a
95% Welch t interval, missing runs, protocol, versions, hardware, commands) and ``accuracy.png`` (test
top-1 per epoch of the main models; test top-1 against SaE cardinality).
"""
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as a file (python benchmarks/accuracy_report.py): import the package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.accuracy import PATHS
from benchmarks.common import (
    CAVEATS, COLUMNS, CONFIDENCE, appendix, delta_column, group_runs, header, markdown_table, plot_band,
    provenance, report_command, reported_top1, save_figure, verdict)

REFERENCE = 'seresnet18'
MAIN_MODELS = ('resnet18', 'seresnet18', 'saeresnet18', 'resnet18_eca', 'resnet18_cbam')
# the verdicts: each pair (configuration, reference) with runs on both sides gets one sentence
COMPARISONS = (('saeresnet18', REFERENCE), ('saeresnet18', 'resnet18'), (REFERENCE, 'resnet18'))


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
    """Left: test top-1 per epoch (mean, min-max band) of the main models. Right: test top-1 vs cardinality."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = group_runs(results, MAIN_MODELS)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for config in MAIN_MODELS:
        if config in runs:
            plot_band(left, [r['curve']['test_top1'] for r in runs[config]], config)
    left.set(xlabel='epoch', ylabel='test top-1 (%)', title='Test top-1 per epoch (mean, min-max over seeds)')
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.grid(alpha=0.3)
    left.legend()

    def points(residual: bool) -> List[Tuple[int, List[float]]]:
        found = []
        for config, rs in runs.items():
            kwargs = rs[0]['model_kwargs']
            if rs[0]['model'] == 'saeresnet18' and kwargs.get('sae_residual', True) == residual:
                found.append((kwargs.get('sae_cardinality', 4), reported_top1(rs)))
        return sorted(found)

    for residual, style, shift, label in ((True, 'o-', 1., 'saeresnet18, x(1+s)'),
                                          (False, 's', 1.08, 'saeresnet18, x·s (no residual; drawn beside its k)')):
        pts = points(residual)
        if pts:
            right.errorbar([k * shift for k, _ in pts], [statistics.fmean(v) for _, v in pts],
                           yerr=[statistics.stdev(v) if len(v) > 1 else 0. for _, v in pts], fmt=style, capsize=4,
                           label=label + ' (mean ± std)')
    for config, color in (('seresnet18', 'tab:red'), ('resnet18', 'tab:gray')):
        if config in runs:
            values = reported_top1(runs[config])
            right.axhline(statistics.fmean(values), color=color, linestyle='--', label=f'{config} (n={len(values)})')
    right.set_xscale('log', base=2)
    right.set_xticks([1, 2, 4, 8], labels=['1', '2', '4', '8'])
    right.set(xlabel='SaE cardinality k', ylabel='test top-1 (%)', title='Test top-1 vs cardinality')
    right.grid(alpha=0.3)
    right.legend()
    save_figure(fig, path, results, f'Fashion-MNIST, {results["protocol"]["epochs"]} epochs')


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
