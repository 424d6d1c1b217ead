"""Report of the warm-start study written by benchmarks/warm_start.py.

    python benchmarks/warm_start_report.py [--results benchmarks/results/warm_start.json] [--out-dir benchmarks/results]
    python benchmarks/warm_start_report.py --doc docs/results.md     # also the doc's "warm-start" section

Writes ``warm_start.md`` (test top-1 per run group, mean +- std over seeds; each conversion against its
continued source and against saeresnet18 from scratch with a 95% Welch t interval; the epoch-0 check of
every conversion; a one-line verdict; missing runs, protocol, versions, hardware, commands) and
``warm_start.png`` (test top-1 per epoch of the sources, the arms from their starting point, and scratch).
"""
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as a file (python benchmarks/warm_start_report.py): import the package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks import report, stats
from benchmarks.warm_start import PATHS

SCRATCH = 'saeresnet18_scratch'
# Each conversion and the run it is judged against: its continued source (same start, same further epochs).
REFERENCES = {'resnet18_to_saeresnet18': 'resnet18_continued',
              'seresnet18_to_saeresnet18_noresidual': 'seresnet18_continued'}
COMPARISONS = (*REFERENCES.items(), ('resnet18_to_saeresnet18', SCRATCH))
ORDER = ('resnet18', 'seresnet18', 'resnet18_continued', 'resnet18_to_saeresnet18', 'seresnet18_continued',
         'seresnet18_to_saeresnet18_noresidual', SCRATCH)
PLAIN_WORDS = {'resnet18_to_saeresnet18': 'resnet18 converted to saeresnet18 and fine-tuned',
               'seresnet18_to_saeresnet18_noresidual': 'seresnet18 converted to saeresnet18 (x·s) and fine-tuned',
               'resnet18_continued': 'resnet18 trained on', 'seresnet18_continued': 'seresnet18 trained on',
               SCRATCH: 'saeresnet18 from scratch'}


def start_text(runs: List[Dict[str, Any]]) -> str:
    """Where a run group starts: from scratch, or a source loaded or converted."""
    source = runs[0].get('source')
    if source is None:
        return 'scratch'
    return f'{source["config"]} ' + ('converted' if runs[0]['conversion'] else 'loaded')


def start_top1(runs: List[Dict[str, Any]]) -> str:
    """Mean ± std test top-1 at epoch 0 (the starting point) of warm-started runs, '-' for the others."""
    starts = [r['start']['test_top1'] for r in runs if r.get('start')]
    return stats.mean_std(starts) if starts else '-'


def epoch_precision(results: Dict[str, Any]) -> str:
    """How the per-epoch evaluations ran, from the devices of the invocations that trained the runs."""
    devices = {invocation['device'] for invocation in results['invocations']}
    if devices == {'cpu'}:
        return 'fp32'
    return ('bf16 autocast on the GPU, so a converted model and its loaded source may differ on a few test images'
            + (' (fp32 on the CPU)' if 'cpu' in devices else ''))


def conversion_rows(runs: Dict[str, List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """The conversion check of every converted run, with its arm and seed."""
    return [{'arm': config, 'seed': r['seed'], **r['conversion']}
            for config, rs in runs.items() for r in rs if r.get('conversion')]


def exactness_sentence(rows: Sequence[Dict[str, Any]]) -> Optional[str]:
    """What the epoch-0 checks say, from their numbers."""
    if not rows:
        return None
    inexact = [f'{r["arm"]} seed {r["seed"]} ({r["predictions_differ"]} predictions differ)'
               for r in rows if r['predictions_differ']]
    worst = max(r['max_abs_logit_diff'] for r in rows)
    relative = max(r['max_abs_logit_diff'] / r['max_abs_logit'] for r in rows if r['max_abs_logit'] > 0)
    scale = f'largest absolute logit difference {worst:.2e} ({relative:.1e} of the largest logit)'
    if inexact:
        return (f'**Epoch 0: NOT exact.** {len(inexact)} of {len(rows)} converted models predict differently from '
                f'their source on the test set: {"; ".join(inexact)}; {scale}.')
    return (f'Epoch 0: each of the {len(rows)} converted models predicts the same class as its source on every one of '
            f'the {rows[0]["test_images"]} test images, so its test top-1 equals the source\'s (fp32); {scale}.')


def comparison_phrase(name: str, reference: str, runs: Dict[str, List[Dict[str, Any]]]) -> Optional[str]:
    """'<name> vs <reference>: <finding> (Δ, interval)', from the numbers; None where a side has no runs."""
    if name not in runs or reference not in runs:
        return None
    interval = stats.welch_interval(stats.reported_top1(runs[name]), stats.reported_top1(runs[reference]))
    words = f'{PLAIN_WORDS[name]} vs {PLAIN_WORDS[reference]}'
    if interval is None:
        return f'{words}: too few seeds for an interval'
    diff, low, high = interval
    finding = stats.direction(interval) or 'no detectable difference'
    return f'{words}: {finding} ({diff:+.2f} points, 95% CI [{low:+.2f}, {high:+.2f}])'


def verdict_line(results: Dict[str, Any], runs: Dict[str, List[Dict[str, Any]]]) -> Optional[str]:
    """The one-line verdict: each comparison's finding, derived from its interval."""
    phrases = [p for p in (comparison_phrase(a, b, runs) for a, b in COMPARISONS) if p]
    if not phrases:
        return None
    seeds = sorted({len(rs) for rs in runs.values()})
    return (f'**Verdict** ({results["protocol"]["finetune"]["epochs"]} further epochs, '
            f'{"/".join(map(str, seeds))} seeds): ' + '; '.join(phrases) + '.')


def summary(results: Dict[str, Any]) -> List[str]:
    """The table, the comparisons, the epoch-0 check and the verdict (also the doc's section)."""
    runs = stats.group_runs(results, ORDER)
    columns = [
        report.COLUMNS['configuration'], ('role', lambda rs: rs[0]['role']), ('start', start_text),
        report.COLUMNS['model'], report.COLUMNS['kwargs'], ('epochs', lambda rs: str(rs[0]['schedule']['epochs'])),
        report.COLUMNS['n'], report.COLUMNS['test_top1'],
        report.delta_column(runs, REFERENCES.get, 'Δ vs continued source [95% CI]', no_reference='-'),
        ('epoch-0 test top-1 (%), training precision', start_top1), report.COLUMNS['test_loss'],
        report.COLUMNS['best_val_top1'],
        report.COLUMNS['best_epoch'],
    ]
    protocol = results['protocol']
    lines = [
        f'Test top-1 (%) of the epoch chosen by validation top-1 (epochs 1..N; epoch 0, the starting point, is not a '
        f'candidate), mean ± sample std over n seeds. Sources: {protocol["sources"]["epochs"]} epochs under the '
        f'accuracy protocol; every warm start then trains {protocol["finetune"]["epochs"]} epochs with one schedule '
        f'(lr {protocol["finetune"]["lr"]:g} cosine to 0, no warmup, fresh optimizer); {SCRATCH} trains '
        f'{protocol["scratch_epochs"]} epochs. Δ: difference of mean test top-1 to the continued source, in points, '
        f'with a {stats.CONFIDENCE:.0%} Welch t interval. Epoch-0 test top-1: the warm start before its first step, '
        f'evaluated as every epoch is ({epoch_precision(results)}); the exactness check is the fp32 one below.',
        '',
        *report.markdown_table(runs, columns),
    ]
    sentences = [s for s in (stats.verdict(a, runs, b) for a, b in COMPARISONS) if s]
    exactness = exactness_sentence(conversion_rows(runs))
    verdict = verdict_line(results, runs)
    for block in (['**What the numbers say**', '', *sentences] if sentences else [], [exactness] if exactness else [],
                  [verdict] if verdict else [], [stats.CAVEATS] if sentences else []):
        if block:
            lines += ['', *block]
    return lines


def conversion_table(runs: Dict[str, List[Dict[str, Any]]]) -> List[str]:
    """Per converted run: epoch-0 test top-1 and loss of source and converted model, logit difference."""
    rows = conversion_rows(runs)
    if not rows:
        return ['No converted run has finished yet.']
    lines = ['| arm | seed | source test top-1 (%) | converted test top-1 (%) | source test loss | '
             'converted test loss | max abs logit difference | predictions that differ |',
             '|---|---|---|---|---|---|---|---|']
    lines += [f'| {r["arm"]} | {r["seed"]} | {r["source_test_top1"]:.2f} | {r["converted_test_top1"]:.2f} | '
              f'{r["source_test_loss"]:.6f} | {r["converted_test_loss"]:.6f} | {r["max_abs_logit_diff"]:.2e} | '
              f'{r["predictions_differ"]} |' for r in rows]
    return lines


def markdown(results: Dict[str, Any], source: str) -> str:
    """The report as markdown; ``source`` names the results file."""
    runs = stats.group_runs(results, ORDER)
    lines = [
        *report.header('Warm starts into SaE: Fashion-MNIST, ResNet-18 family', 'benchmarks/warm_start_report.py',
                       source, results, runs, 'run group'),
        *summary(results),
        '',
        '## The conversions at epoch 0',
        '',
        results['protocol']['exactness_check'][0].upper() + results['protocol']['exactness_check'][1:] + '.',
        '',
        *conversion_table(runs),
        '',
        *report.appendix(results),
    ]
    return '\n'.join(lines) + '\n'


def plot(results: Dict[str, Any], path: Path) -> None:
    """Test top-1 per epoch, one panel per source: the source, its arms from their starting point (epoch 0 drawn at
    the source's last epoch) and saeresnet18 from scratch; zoomed on the last source epochs and the warm starts."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = stats.group_runs(results, ORDER)
    protocol = results['protocol']
    source_epochs = protocol['sources']['epochs']
    first = max(1, source_epochs - 4)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    shown: List[float] = []
    for ax, source in zip(axes, protocol['source_configs'], strict=False):
        groups: List[Tuple[str, List[List[float]], int, Dict[str, Any]]] = []
        if source in runs:
            groups.append((f'{source} (source)', [r['curve']['test_top1'] for r in runs[source]], 1,
                           {'color': 'black'}))
        for config, rs in runs.items():
            if rs[0]['role'] == 'arm' and (rs[0]['source'] or {}).get('config') == source:
                curves = [[r['start']['test_top1'], *r['curve']['test_top1']] for r in rs]
                groups.append((config, curves, source_epochs, {'marker': 'o', 'markersize': 3}))
        if SCRATCH in runs:
            groups.append((SCRATCH, [r['curve']['test_top1'] for r in runs[SCRATCH]], 1, {'linestyle': '--'}))
        for label, curves, first_epoch, style in groups:
            report.plot_band(ax, curves, label, first_epoch, **style)
            shown += [v for c in curves for e, v in enumerate(c, first_epoch) if e >= first]
        ax.axvline(source_epochs, color='gray', linewidth=0.8)
        ax.set(xlabel='epoch (warm starts: source epochs + fine-tuning epochs)', title=f'from {source}')
        ax.set_xlim(left=first - 0.2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel('test top-1 (%), mean and min-max over seeds')
    if shown:
        margin = 0.1 * (max(shown) - min(shown)) + 0.05
        axes[0].set_ylim(min(shown) - margin, max(shown) + margin)
    report.save_figure(fig, path, results, f'Fashion-MNIST warm starts, {protocol["finetune"]["epochs"]} further '
                                           f'epochs (curves for the plot only; selection uses validation)')


def doc_summary(results: Dict[str, Any], source: str, plot_link: str) -> str:
    """The doc's section: where the figures come from, the summary and the plot."""
    counts = f'{len(results["runs"])} runs'
    return '\n'.join([report.provenance(results, source, counts), '', *summary(results), '',
                      f'![test top-1 per epoch of the warm starts]({plot_link})']) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> Tuple[Path, Path]:
    """Write warm_start.md and warm_start.png (and the doc's section with --doc); their paths."""
    return report.report_command(argv, __doc__.split('\n\n')[0], PATHS.results, 'benchmarks/warm_start.py',
                                 'warm_start', 'warm-start', 'benchmarks/warm_start_report.py', markdown, plot,
                                 doc_summary)


if __name__ == '__main__':
    main()
