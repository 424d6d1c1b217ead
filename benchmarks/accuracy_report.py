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
from typing import Any, Dict, List, Optional, Sequence, Tuple

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


def group_runs(results: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    """Runs per configuration (the main models first, then the others by name), each sorted by seed."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for run in results['runs']:
        groups.setdefault(run['config'], []).append(run)
    order = sorted(groups, key=lambda c: (MAIN_MODELS.index(c) if c in MAIN_MODELS else len(MAIN_MODELS), c))
    return {config: sorted(groups[config], key=lambda r: r['seed']) for config in order}


def _mean_std(values: Sequence[float], digits: int = 2) -> str:
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


def verdict(name: str, runs: Dict[str, List[Dict[str, Any]]], reference: str) -> Optional[str]:
    """One sentence on ``name`` vs ``reference`` that says no more than the interval does."""
    if name not in runs or reference not in runs:
        return None
    a = [r['test_top1'] for r in runs[name]]
    b = [r['test_top1'] for r in runs[reference]]
    interval = welch_interval(a, b)
    counts = f'{len(a)} vs {len(b)} seeds'
    if interval is None:
        return f'- {name} vs {reference}: {statistics.fmean(a) - statistics.fmean(b):+.2f} points ({counts}); ' \
               f'too few seeds for an interval, so no conclusion.'
    diff, low, high = interval
    if low > 0 or high < 0:
        side = 'higher' if low > 0 else 'lower'
        finding = f'the 95% interval excludes 0: {name} is {side} than {reference} under this protocol'
    else:
        finding = 'the 95% interval includes 0: no difference is detectable at this number of seeds'
    return f'- {name} vs {reference}: {diff:+.2f} points, 95% CI [{low:+.2f}, {high:+.2f}] ({counts}); {finding}.'


def summary(results: Dict[str, Any]) -> List[str]:
    """The results table and what it says (also the README's section)."""
    protocol = results['protocol']
    runs = group_runs(results)
    reference = [r['test_top1'] for r in runs.get(REFERENCE, [])]
    lines = [
        f'Test top-1 (%) of the checkpoint chosen by validation top-1, mean ± sample std over n seeds. '
        f'Δ vs {REFERENCE}: difference of mean test top-1 in points with a {CONFIDENCE:.0%} Welch t interval. '
        f'Params and GMACs at {"x".join(map(str, protocol["input_size"]))} input, 10 classes.',
        '',
        f'| configuration | model | kwargs | n | test top-1 (%) | Δ vs {REFERENCE} [95% CI] | test loss '
        f'| best val top-1 (%) | best epoch | params (M) | GMACs |',
        '|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for config, rs in runs.items():
        top1 = [r['test_top1'] for r in rs]
        interval = None if config == REFERENCE else welch_interval(top1, reference)
        lines.append('| ' + ' | '.join([
            config, rs[0]['model'], _kwargs_text(rs[0]['model_kwargs']), str(len(rs)), _mean_std(top1),
            'reference' if config == REFERENCE else _diff_text(interval),
            _mean_std([r['test_loss'] for r in rs], 4), _mean_std([r['best_val_top1'] for r in rs]),
            ', '.join(str(r['best_epoch']) for r in rs),
            f'{rs[0]["params"] / 1e6:.3f}', f'{rs[0]["gmacs"]:.4f}',
        ]) + ' |')
    sentences = [s for s in (verdict(n, runs, ref) for n, ref in (
        ('saeresnet18', REFERENCE), ('saeresnet18', 'resnet18'), (REFERENCE, 'resnet18'))) if s]
    if sentences:
        lines += ['', '**What the numbers say**', '', *sentences,
                  '', 'An interval that includes 0 is not evidence of equality; it means this many seeds cannot '
                      'tell the two apart. Each interval is for one comparison on its own (no correction for the '
                      'several comparisons in the table). The result holds for this data set, model size and '
                      'protocol only.']
    return lines


def markdown(results: Dict[str, Any], source: str) -> str:
    """The report as markdown; ``source`` names the results file."""
    protocol = results['protocol']
    runs = group_runs(results)
    missing = results.get('missing', [])
    seed_counts = sorted({len(v) for v in runs.values()})
    lines = [
        '# Does SaE help? Fashion-MNIST, ResNet-18 family',
        '',
        f'Generated by `benchmarks/accuracy_report.py` from `{source}`. '
        f'{len(results["runs"])} runs; seeds per configuration: {", ".join(map(str, seed_counts)) or "none"}; '
        f'{protocol["epochs"]} epochs each.'
        + (' **Quick smoke protocol: not a result.**' if protocol['quick'] else ''),
        '',
    ]
    if missing:
        lines += [f'**Incomplete sweep: {len(missing)} requested run(s) missing** (listed below); the numbers are '
                  f'preliminary and configurations may have different numbers of seeds.', '']
    lines += summary(results)
    lines += ['', '## Missing runs', '']
    lines += [f'- {m["config"]} seed {m["seed"]}' for m in missing] or ['None: the requested sweep is complete.']
    lines += ['', '## Protocol', '', '| field | value |', '|---|---|']
    lines += [f'| {k} | {v} |' for k, v in protocol.items()]
    lines += ['', '## Versions, hardware, commands', '']
    lines += [f'- {k}: {v}' for k, v in results.get('versions', {}).items()]
    lines += [f'- hardware: {h}' for h in results.get('hardware', [])]
    lines += [f'- command: `{c}`' for c in results.get('commands', [])]
    workers = sorted({i['workers'] for i in results.get('invocations', [])})
    lines += [f'- total wall time: {results.get("wall_time_s", 0.) / 60:.1f} min'
              + (f' ({"/".join(map(str, workers))} concurrent worker(s); training images/s in the JSON are per '
                 f'run and shared the device)' if workers else '')]
    return '\n'.join(lines) + '\n'


def plot(results: Dict[str, Any], path: Path) -> None:
    """Left: test top-1 per epoch (mean, min-max band) of the main models. Right: test top-1 vs cardinality."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = group_runs(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for config in MAIN_MODELS:
        if config not in runs:
            continue
        curves = [r['curve']['test_top1'] for r in runs[config]]
        epochs = range(1, min(map(len, curves)) + 1)
        by_epoch = [[c[e - 1] for c in curves] for e in epochs]
        line, = left.plot(epochs, [statistics.fmean(v) for v in by_epoch], label=f'{config} (n={len(curves)})')
        left.fill_between(epochs, [min(v) for v in by_epoch], [max(v) for v in by_epoch], color=line.get_color(),
                          alpha=0.2)
    left.set(xlabel='epoch', ylabel='test top-1 (%)', title='Test top-1 per epoch (mean, min-max over seeds)')
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.grid(alpha=0.3)
    left.legend()

    def points(residual: bool) -> List[Tuple[int, List[float]]]:
        found = []
        for config, rs in runs.items():
            kwargs = rs[0]['model_kwargs']
            if rs[0]['model'] == 'saeresnet18' and kwargs.get('sae_residual', True) == residual:
                found.append((kwargs.get('sae_cardinality', 4), [r['test_top1'] for r in rs]))
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
            values = [r['test_top1'] for r in runs[config]]
            right.axhline(statistics.fmean(values), color=color, linestyle='--', label=f'{config} (n={len(values)})')
    right.set_xscale('log', base=2)
    right.set_xticks([1, 2, 4, 8], labels=['1', '2', '4', '8'])
    right.set(xlabel='SaE cardinality k', ylabel='test top-1 (%)', title='Test top-1 vs cardinality')
    right.grid(alpha=0.3)
    right.legend()
    note = f'Fashion-MNIST, {results["protocol"]["epochs"]} epochs'
    if results.get('missing'):
        note += f'; INCOMPLETE: {len(results["missing"])} runs missing'
    fig.suptitle(note)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def readme_summary(results: Dict[str, Any], source: str) -> str:
    """The README's section: where the figures come from, then the summary."""
    versions, protocol = results.get('versions', {}), results['protocol']
    lines = [
        f'From `{source}` ({len(results["runs"])} runs, {protocol["epochs"]} epochs each, '
        f'{len(results.get("missing", []))} requested runs missing) on {"; ".join(results.get("hardware", []))}, '
        f'torch {versions.get("torch")}, timm {versions.get("timm")}; '
        + '; '.join(f'`{c}`' for c in results.get('commands', [])) + '.',
        '',
        *summary(results),
    ]
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> Tuple[Path, Path]:
    """Write accuracy.md and accuracy.png (and the README's section with --readme); their paths."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--results', type=Path, default=DEFAULT_RESULTS)
    parser.add_argument('--out-dir', type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument('--readme', type=Path, help='also rewrite the "accuracy" section of this README')
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f'{args.results} does not exist; run benchmarks/accuracy.py first')
    results = json.loads(args.results.read_text())
    if not results.get('runs'):
        parser.error(f'{args.results} holds no finished runs yet')
    md_path, png_path = args.out_dir / 'accuracy.md', args.out_dir / 'accuracy.png'
    args.out_dir.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(results, args.results.name))
    plot(results, png_path)
    if args.readme:
        update_readme_section('accuracy', readme_summary(results, 'benchmarks/results/' + args.results.name),
                              'benchmarks/accuracy_report.py', args.readme)
    print(f'wrote {md_path} and {png_path}')
    return md_path, png_path


if __name__ == '__main__':
    main()
