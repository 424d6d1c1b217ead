"""The statistics of the studies' comparisons: Welch intervals of mean top-1 differences, and what they allow saying."""
import math
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from scipy import stats

CONFIDENCE = 0.95


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
    half = stats.t.ppf(0.5 + confidence / 2., df) * se
    return diff, float(diff - half), float(diff + half)


def group_runs(results: Dict[str, Any], first: Sequence[str] = ()) -> Dict[str, List[Dict[str, Any]]]:
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


def diff_text(interval: Optional[Tuple[float, float, float]]) -> str:
    if interval is None:
        return 'n/a (needs ≥ 2 seeds on both sides)'
    diff, low, high = interval
    return f'{diff:+.2f} [{low:+.2f}, {high:+.2f}]'


def reported_top1(runs: Sequence[Dict[str, Any]]) -> List[float]:
    """The reported (validation-chosen) test top-1 of each run."""
    return [r['test_top1'] for r in runs]


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
