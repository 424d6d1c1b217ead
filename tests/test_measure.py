"""timm_sae.measure: the interleaved timing that the demo and the speed benchmarks share."""
from collections import Counter
from typing import List

import pytest

from timm_sae.measure import balanced_orders, time_interleaved


@pytest.mark.parametrize('count', [1, 2, 3, 4, 5, 6, 7])
def test_balanced_orders_give_every_step_every_predecessor_equally_often(count: int):
    names = [chr(ord('A') + i) for i in range(count)]
    orders = balanced_orders(names)
    assert len(orders) == (count if count % 2 == 0 else 2 * count)
    assert all(sorted(order) == names for order in orders)
    follows = Counter((a, b) for order in orders for a, b in zip(order[:-1], order[1:], strict=True))
    pairs = [(a, b) for a in names for b in names if a != b]
    assert set(follows) == set(pairs)
    assert len(set(follows.values())) <= 1  # each ordered pair equally often
    assert Counter(order[0] for order in orders) == Counter({name: len(orders) // count for name in names})


def test_time_interleaved_runs_the_balanced_orders():
    calls: List[str] = []
    steps = {name: (lambda name=name: calls.append(name)) for name in 'ABCD'}
    times = time_interleaved(steps, rounds=5, warmup=1)
    orders = balanced_orders(list('ABCD'))
    assert calls == list('ABCD') + [name for order in orders + orders[:1] for name in order]
    assert {name: len(t) for name, t in times.items()} == {name: 5 for name in 'ABCD'}
    assert all(t >= 0 for ts in times.values() for t in ts)
