"""timm_sae.measure: the interleaved timing that the demo and the speed benchmarks share."""
from typing import List

from timm_sae.measure import time_interleaved


def test_time_interleaved_rotates_the_order_each_round():
    calls: List[str] = []
    steps = {name: (lambda name=name: calls.append(name)) for name in 'ABC'}
    times = time_interleaved(steps, rounds=4, warmup=1)
    assert calls == list('ABC' 'ABC' 'BCA' 'CAB' 'ABC')  # warm-up, then rounds 0-3
    assert {name: len(t) for name, t in times.items()} == {'A': 4, 'B': 4, 'C': 4}
    assert all(t >= 0 for ts in times.values() for t in ts)
