"""``timm-sae demo``: the family, one model through the Hub format and back, and a warm start, offline.

Prints the family table, builds a seeded SaE model, saves its weights as a checkpoint, exports it
(``timm_sae.hub.export_checkpoint``) as a repository's snapshot in a Hugging Face Hub cache, loads
it back with ``timm.create_model('hf-hub:...', pretrained=True)`` with the Hub offline and checks
the outputs are bit-identical. Then the warm start: seeded stand-in weights for timm's plain
twin (nothing is downloaded) laid out in the Hub cache as timm's own repository of the default tag,
and ``timm.create_model(model, pretrained=True)`` converts them exactly while loading (the logits
equal the source's). Last, a quick look at speed: the model against its timm SE twin, else its plain
one (eval, small batch, interleaved rounds), printed as the median throughput ratio (> 1: faster) with the quartiles
of the per-round ratios. That is a glimpse on whatever else the machine is running, not a
measurement: ``benchmarks/speed.py`` measures speed (``docs/speed.md`` in the source repository).
"""
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import timm
import torch
from safetensors.torch import save_file

from ._testing import EXACT_RTOL, hub_snapshot, offline_hub_cache, relative_error
from .family import family_table
from .hub import WEIGHTS_NAME, export_checkpoint
from .measure import describe, median_ratio, quartiles, time_interleaved
from .sae_resnet import HUB_ORG, twins

__all__ = ['run_demo', 'warm_start', 'EXACT_RTOL']


def run_demo(
        model_name: str = 'saeresnet50',
        img_size: int = 224,
        batch_size: int = 4,
        rounds: int = 15,
        seed: int = 0,
        table: bool = True,
        out: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Run the demo, printing through ``out``; returns what it measured (``ok``: round trip and warm start exact)."""
    start = time.perf_counter()
    if table:
        out('The SaE family (timm-sae list):')
        for line in family_table():
            out(line)
        out('')

    torch.manual_seed(seed)
    model = timm.create_model(model_name).eval()
    repo_id = f'{HUB_ORG}/{model_name}.demo'
    x = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory(prefix='timm-sae-demo-') as tmp_dir:
        tmp = Path(tmp_dir)
        checkpoint = tmp / f'{model_name}.pth'
        torch.save(model.state_dict(), checkpoint)
        snapshot = export_checkpoint(checkpoint, hub_snapshot(tmp / 'hub', repo_id), model_name=model_name)
        out(f'Exported {checkpoint.name} -> {", ".join(sorted(p.name for p in snapshot.iterdir()))}')
        out(f'Hub cache: {snapshot.relative_to(tmp)}')
        with offline_hub_cache(tmp / 'hub'):
            loaded = timm.create_model(f'hf-hub:{repo_id}', pretrained=True).eval()
    with torch.inference_mode():
        identical = torch.equal(model(x), loaded(x))
    out(f"timm.create_model('hf-hub:{repo_id}', pretrained=True), offline: "
        f"outputs {'bit-identical' if identical else 'DIFFER'} to the original on a {tuple(x.shape)} batch")

    warm_start_error = warm_start(model_name, x, seed, out)

    names = twins(model_name)
    twin_name = names.se or names.plain
    if twin_name is None:
        raise ValueError(f'{model_name} is not a model of the SaE family: timm-sae list shows them')
    input_size = (3, img_size, img_size)
    stats = {name: describe(name, input_size) for name in (model_name, twin_name)}
    torch.manual_seed(seed)
    twin = timm.create_model(twin_name).eval()
    with torch.inference_mode():
        times = time_interleaved(
            {model_name: lambda: model(x), twin_name: lambda: twin(x)}, rounds=rounds, warmup=1)
    ratio = median_ratio(times[twin_name], times[model_name])  # t_twin / t_model: throughput ratio
    q1, q3 = quartiles([t / m for t, m in zip(times[twin_name], times[model_name], strict=True)])
    out('')
    out(f'| model | params (M) | GMACs @ {img_size}px | ms / batch of {batch_size}, median [quartiles] of {rounds} |')
    out('|---|---:|---:|---:|')
    for name in (model_name, twin_name):
        ms = [1e3 * t for t in times[name]]
        lo, hi = quartiles(ms)
        out(f"| {name} | {stats[name]['params_m']:.2f} | {stats[name]['gmacs']:.2f} | "
            f"{statistics.median(ms):.1f} [{lo:.1f}, {hi:.1f}] |")
    out(f'{model_name} / {twin_name} throughput ratio: {ratio:.3f} [quartiles {q1:.3f}, {q3:.3f}] (> 1: faster; '
        f'per-round ratios over {rounds} interleaved rounds, {torch.get_num_threads()} threads, eval, fp32)')
    out('This is a quick look, moved by whatever else runs on the machine, not a measurement: speed is '
        'measured by benchmarks/speed.py (results in docs/speed.md in the source repository).')
    seconds = time.perf_counter() - start
    out(f'demo took {seconds:.1f} s')
    ok = identical and (warm_start_error is None or warm_start_error <= EXACT_RTOL)
    return dict(ok=ok, identical=identical, warm_start_error=warm_start_error, stats=stats, times=times,
                ratio=ratio, seconds=seconds)


def warm_start(model_name: str, x: torch.Tensor, seed: int, out: Callable[[str], None]) -> Optional[float]:
    """``create_model(model_name, pretrained=True)`` from stand-in source weights; the relative logit difference."""
    source_name = twins(model_name).plain
    cfg = timm.models.get_pretrained_cfg(model_name)
    if source_name is None or cfg is None or not cfg.hf_hub_id:
        out(f'{model_name} has no plain timm twin with weights: no warm-start tag to show')
        return None
    torch.manual_seed(seed)
    source = timm.create_model(source_name, zero_init_last=False).eval()  # stand-in for {cfg.hf_hub_id}
    with tempfile.TemporaryDirectory(prefix='timm-sae-demo-') as tmp_dir:
        tmp = Path(tmp_dir)
        snapshot = hub_snapshot(tmp, cfg.hf_hub_id)
        snapshot.mkdir(parents=True)
        save_file(source.state_dict(), snapshot / WEIGHTS_NAME)
        with offline_hub_cache(tmp):
            converted = timm.create_model(model_name, pretrained=True).eval()
    with torch.inference_mode():
        expected, logits = source(x), converted(x)
    error = relative_error(logits, expected)
    out(f"timm.create_model('{model_name}', pretrained=True) with seeded stand-in weights as {cfg.hf_hub_id} "
        f"(tag {cfg.tag}): relative logit difference to {source_name} {error:.1e} (exact conversion; SaE layers "
        f"untrained until fine-tuned)")
    return error
