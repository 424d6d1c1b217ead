"""Markdown table and plot of the Fashion-MNIST accuracy results written by benchmarks/accuracy.py.

    python benchmarks/accuracy_report.py [--results benchmarks/results/accuracy.json] [--out-dir benchmarks/results]

Writes ``accuracy.md`` (mean +- std over seeds per configuration, the difference to seresnet18 with a
95% Welch t interval, missing runs, protocol, versions, hardware, commands) and ``accuracy.png``
(test top-1 per epoch of the main models; test top-1 against SaE cardinality). The t quantile is
computed here (regularised incomplete beta + bisection), so scipy is not needed.
"""
import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from readme_sections import update_readme_section

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO_ROOT / 'benchmarks' / 'results' / 'accuracy.json'
DEFAULT_OUT_DIR = REPO_ROOT / 'benchmarks' / 'results'
REFERENCE = 'seresnet18'
MAIN_MODELS = ('resnet18', 'seresnet18', 'saeresnet18', 'resnet18_eca', 'resnet18_cbam')
CONFIDENCE = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1., a - 1.
    c, d = 1., 1. - qab * x / qap
    d = 1. / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1. + aa * d
            d = 1. / (d if abs(d) > tiny else tiny)
            c = 1. + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.) < eps:
            return h
    raise ArithmeticError(f'incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})')


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if not 0. <= x <= 1.:
        raise ValueError(f'x={x} outside [0, 1]')
    if x in (0., 1.):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.) / (a + b + 2.):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1. - math.exp(log_front) * _betacf(b, a, 1. - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` (real, > 0) degrees of freedom."""
    tail = 0.5 * betainc(df / 2., 0.5, df / (df + t * t))
    return 1. - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t distribution (0 < p < 1, df > 0) by bisection on ``t_cdf``."""
    if not 0. < p < 1. or not df > 0.:
        raise ValueError(f'need 0 < p < 1 and df > 0, got p={p}, df={df}')
    if p < 0.5:
        return -t_ppf(1. - p, df)
    lo, hi = 0., 1.
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2. * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1., hi):
            break
    return 0.5 * (lo + hi)


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
                   ) -> Optional[Tuple[float, float, float]]:
    """(mean(a) - mean(b), low, high): Welch t interval of the difference; None with fewer than 2 values in a or b."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_ppf(0.5 + confidence / 2., df) * se
    return diff, diff - half, diff + half


def group_runs(results: Dict[str, Any], first: Sequence[str] = MAIN_MODELS) -> Dict[str, List[Dict[str, Any]]]:
    """Runs per configuration (those of ``first`` in its order, then the others by name), each sorted by seed."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for run in results['runs']:
        groups.setdefault(run['config'], []).append(run)
    order = sorted(groups, key=lambda c: (first.index(c) if c in first else len(first), c))
    return {config: sorted(groups[config], key=lambda r: r['seed']) for config in order}


def mean_std(values: Sequence[float], digits: int = 2) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f'{mean:.{digits}f}'
    return f'{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}'


def _kwargs_text(kwargs: Dict[str, Any]) -> str:
    return ', '.join(f'{k}={v!r}' for k, v in kwargs.items()) or '-'


def _diff_text(interval: Optional[Tuple[float, float, float]]) -> str:
    if interval is None:
        return 'n/a (needs ≥ 2 seeds on both sides)'
    diff, low, high = interval
    return f'{diff:+.2f} [{low:+.2f}, {high:+.2f}]'


def reported_top1(runs: Sequence[Dict[str, Any]]) -> List[float]:
    """The reported (validation-chosen) test top-1 of each run."""
    return [r['test_top1'] for r in runs]


# A table column: header, and the cell of one configuration from its runs (sorted by seed).
Column = Tuple[str, Callable[[List[Dict[str, Any]]], str]]
COLUMNS: Dict[str, Column] = {
    'configuration': ('configuration', lambda rs: rs[0]['config']),
    'model': ('model', lambda rs: rs[0]['model']),
    'kwargs': ('kwargs', lambda rs: _kwargs_text(rs[0]['model_kwargs'])),
    'n': ('n', lambda rs: str(len(rs))),
    'test_top1': ('test top-1 (%)', lambda rs: mean_std(reported_top1(rs))),
    'test_loss': ('test loss', lambda rs: mean_std([r['test_loss'] for r in rs], 4)),
    'best_val_top1': ('best val top-1 (%)', lambda rs: mean_std([r['best_val_top1'] for r in rs])),
    'best_epoch': ('best epoch', lambda rs: ', '.join(str(r['best_epoch']) for r in rs)),
    'params': ('params (M)', lambda rs: f'{rs[0]["params"] / 1e6:.3f}'),
    'gmacs': ('GMACs', lambda rs: f'{rs[0]["gmacs"]:.4f}'),
}


def delta_column(runs: Dict[str, List[Dict[str, Any]]], reference_of: Callable[[str], Optional[str]], header: str,
                 no_reference: str = 'reference') -> Column:
    """Column of the difference in mean test top-1 to the configuration ``reference_of(config)``, with its Welch
    interval; ``no_reference`` where that is None."""
    def cell(rs: List[Dict[str, Any]]) -> str:
        reference = reference_of(rs[0]['config'])
        if reference is None:
            return no_reference
        return _diff_text(welch_interval(reported_top1(rs), reported_top1(runs.get(reference, []))))
    return header, cell


def markdown_table(runs: Dict[str, List[Dict[str, Any]]], columns: Sequence[Column]) -> List[str]:
    """A markdown table with one row per configuration."""
    return ['| ' + ' | '.join(header for header, _ in columns) + ' |', '|' + '---|' * len(columns)] + [
        '| ' + ' | '.join(cell(rs) for _, cell in columns) + ' |' for rs in runs.values()]


def direction(interval: Tuple[float, float, float]) -> Optional[str]:
    """'higher' or 'lower' where the interval excludes 0, else None."""
    _, low, high = interval
    return 'higher' if low > 0 else 'lower' if high < 0 else None


def verdict(name: str, runs: Dict[str, List[Dict[str, Any]]], reference: str) -> Optional[str]:
    """One sentence on ``name`` vs ``reference`` that says no more than the interval does."""
    if name not in runs or reference not in runs:
        return None
    a, b = reported_top1(runs[name]), reported_top1(runs[reference])
    interval = welch_interval(a, b)
    counts = f'{len(a)} vs {len(b)} seeds'
    if interval is None:
        return f'- {name} vs {reference}: {statistics.fmean(a) - statistics.fmean(b):+.2f} points ({counts}); ' \
               f'too few seeds for an interval, so no conclusion.'
    diff, low, high = interval
    side = direction(interval)
    if side:
        finding = f'the 95% interval excludes 0: {name} is {side} than {reference} under this protocol'
    else:
        finding = 'the 95% interval includes 0: no difference is detectable at this number of seeds'
    return f'- {name} vs {reference}: {diff:+.2f} points, 95% CI [{low:+.2f}, {high:+.2f}] ({counts}); {finding}.'


CAVEATS = ('An interval that includes 0 is not evidence of equality; it means this many seeds cannot tell the two '
           'apart. Each interval is for one comparison on its own (no correction for the several comparisons in the '
           'table). The result holds for this data set, model size and protocol only.')


def summary(results: Dict[str, Any]) -> List[str]:
    """The results table and what it says (also the README's section)."""
    protocol = results['protocol']
    runs = group_runs(results)
    delta = delta_column(runs, lambda c: None if c == REFERENCE else REFERENCE, f'Δ vs {REFERENCE} [95% CI]')
    lines = [
        f'Test top-1 (%) of the checkpoint chosen by validation top-1, mean ± sample std over n seeds. '
        f'Δ vs {REFERENCE}: difference of mean test top-1 in points with a {CONFIDENCE:.0%} Welch t interval. '
        f'Params and GMACs at {"x".join(map(str, protocol["input_size"]))} input, 10 classes.',
        '',
        *markdown_table(runs, [*(COLUMNS[k] for k in ('configuration', 'model', 'kwargs', 'n', 'test_top1')), delta,
                               *(COLUMNS[k] for k in ('test_loss', 'best_val_top1', 'best_epoch', 'params', 'gmacs'))]),
    ]
    sentences = [s for s in (verdict(n, runs, ref) for n, ref in (
        ('saeresnet18', REFERENCE), ('saeresnet18', 'resnet18'), (REFERENCE, 'resnet18'))) if s]
    if sentences:
        lines += ['', '**What the numbers say**', '', *sentences, '', CAVEATS]
    return lines


def protocol_rows(protocol: Dict[str, Any], prefix: str = '') -> List[str]:
    """Markdown table rows ``| field | value |`` of a protocol document; nested documents as ``outer.inner``."""
    rows = []
    for key, value in protocol.items():
        if isinstance(value, dict) and value:
            rows += protocol_rows(value, f'{prefix}{key}.')
        else:
            rows.append(f'| {prefix}{key} | {value} |')
    return rows


def appendix(results: Dict[str, Any]) -> List[str]:
    """The report's closing sections: missing runs, protocol, versions, hardware, commands, wall time."""
    missing = results.get('missing', [])
    lines = ['## Missing runs', '']
    lines += [f'- {m["config"]} seed {m["seed"]}' for m in missing] or ['None: the requested sweep is complete.']
    lines += ['', '## Protocol', '', '| field | value |', '|---|---|', *protocol_rows(results['protocol'])]
    lines += ['', '## Versions, hardware, commands', '']
    lines += [f'- {k}: {v}' for k, v in results.get('versions', {}).items()]
    lines += [f'- hardware: {h}' for h in results.get('hardware', [])]
    lines += [f'- command: `{c}`' for c in results.get('commands', [])]
    workers = sorted({i['workers'] for i in results.get('invocations', [])})
    lines += [f'- total wall time: {results.get("wall_time_s", 0.) / 60:.1f} min'
              + (f' ({"/".join(map(str, workers))} concurrent worker(s); training images/s in the JSON are per '
                 f'run and shared the device)' if workers else '')]
    return lines


def header(title: str, script: str, source: str, results: Dict[str, Any], runs: Dict[str, List[Dict[str, Any]]],
           groups: str, epochs: str = '') -> List[str]:
    """A report's title and opening paragraph: script, results file, runs, seeds per group, quick and missing flags."""
    seed_counts = sorted({len(v) for v in runs.values()})
    lines = [
        f'# {title}',
        '',
        f'Generated by `{script}` from `{source}`. '
        f'{len(results["runs"])} runs; seeds per {groups}: {", ".join(map(str, seed_counts)) or "none"}{epochs}.'
        + (' **Quick smoke protocol: not a result.**' if results['protocol']['quick'] else ''),
        '',
    ]
    missing = results.get('missing', [])
    if missing:
        lines += [f'**Incomplete sweep: {len(missing)} requested run(s) missing** (listed below); the numbers are '
                  f'preliminary and configurations may have different numbers of seeds.', '']
    return lines


def markdown(results: Dict[str, Any], source: str) -> str:
    """The report as markdown; ``source`` names the results file."""
    lines = [
        *header('Does SaE help? Fashion-MNIST, ResNet-18 family', 'benchmarks/accuracy_report.py', source, results,
                group_runs(results), 'configuration', f'; {results["protocol"]["epochs"]} epochs each'),
        *summary(results),
        '',
        *appendix(results),
    ]
    return '\n'.join(lines) + '\n'


def plot_band(ax: Any, curves: Sequence[Sequence[float]], label: str, first_epoch: int = 1, **style: Any) -> None:
    """Mean over seeds and min-max band of per-epoch curves (truncated to the shortest) against the epoch."""
    epochs = range(first_epoch, first_epoch + min(map(len, curves)))
    by_epoch = [[c[e - first_epoch] for c in curves] for e in epochs]
    line, = ax.plot(epochs, [statistics.fmean(v) for v in by_epoch], label=f'{label} (n={len(curves)})', **style)
    ax.fill_between(epochs, [min(v) for v in by_epoch], [max(v) for v in by_epoch], color=line.get_color(), alpha=0.2)


def plot(results: Dict[str, Any], path: Path) -> None:
    """Left: test top-1 per epoch (mean, min-max band) of the main models. Right: test top-1 vs cardinality."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = group_runs(results)
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


def save_figure(fig: Any, path: Path, results: Dict[str, Any], title: str) -> None:
    """Title the figure (flagging an incomplete sweep), write it as PNG and close it."""
    import matplotlib.pyplot as plt
    if results.get('missing'):
        title += f'; INCOMPLETE: {len(results["missing"])} runs missing'
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def provenance(results: Dict[str, Any], source: str, runs_text: str) -> str:
    """Where a README section's figures come from: results file, runs, hardware, versions, commands."""
    versions = results.get('versions', {})
    return (f'From `{source}` ({runs_text}, {len(results.get("missing", []))} requested runs missing) on '
            f'{"; ".join(results.get("hardware", []))}, torch {versions.get("torch")}, timm {versions.get("timm")}; '
            + '; '.join(f'`{c}`' for c in results.get('commands', [])) + '.')


def readme_summary(results: Dict[str, Any], source: str) -> str:
    """The README's section: where the figures come from, then the summary."""
    runs_text = f'{len(results["runs"])} runs, {results["protocol"]["epochs"]} epochs each'
    return '\n'.join([provenance(results, source, runs_text), '', *summary(results)]) + '\n'


def report_command(
        argv: Optional[Sequence[str]], description: str, default_results: Path, producer: str, stem: str,
        section: str, script: str, write_markdown: Callable[[Dict[str, Any], str], str],
        write_plot: Callable[[Dict[str, Any], Path], None], readme_section: Callable[[Dict[str, Any], str], str]
) -> Tuple[Path, Path]:
    """The command line of a benchmark report: ``<stem>.md`` and ``<stem>.png`` from the results JSON of
    ``producer`` (and, with --readme, the README's generated section ``section``); their paths."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--results', type=Path, default=default_results)
    parser.add_argument('--out-dir', type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument('--readme', type=Path, help=f'also rewrite the "{section}" section of this README')
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f'{args.results} does not exist; run {producer} first')
    results = json.loads(args.results.read_text())
    if not results.get('runs'):
        parser.error(f'{args.results} holds no finished runs yet')
    md_path, png_path = args.out_dir / f'{stem}.md', args.out_dir / f'{stem}.png'
    args.out_dir.mkdir(parents=True, exist_ok=True)
    md_path.write_text(write_markdown(results, args.results.name))
    write_plot(results, png_path)
    if args.readme:
        update_readme_section(section, readme_section(results, 'benchmarks/results/' + args.results.name), script,
                              args.readme)
    print(f'wrote {md_path} and {png_path}')
    return md_path, png_path


def main(argv: Optional[Sequence[str]] = None) -> Tuple[Path, Path]:
    """Write accuracy.md and accuracy.png (and the README's section with --readme); their paths."""
    return report_command(argv, __doc__.split('\n\n')[0], DEFAULT_RESULTS, 'benchmarks/accuracy.py', 'accuracy',
                          'accuracy', 'benchmarks/accuracy_report.py', markdown, plot, readme_summary)


if __name__ == '__main__':
    main()
