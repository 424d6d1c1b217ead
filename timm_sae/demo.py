"""``timm-sae demo``: the family, and one model through the Hub format and back, offline.

Prints the family table, builds a seeded SaE model, saves its weights as a checkpoint, exports it
to a Hub folder (``timm_sae.hub.export_checkpoint``), lays that out as a Hugging Face Hub cache,
loads it back with ``timm.create_model('hf-hub:...', pretrained=True)`` with the Hub offline,
checks the outputs are bit-identical, and times the model against its timm SE twin (eval, small
batch, interleaved rounds).
"""
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict

import timm
import torch

from .family import family_table
from .hub import export_checkpoint, layout_hub_cache, offline_hub_cache
from .measure import describe, median_ratio, se_twin, time_interleaved
from .sae_resnet import HUB_ORG

__all__ = ['run_demo']


def run_demo(
        model_name: str = 'saeresnet50',
        img_size: int = 224,
        batch_size: int = 4,
        rounds: int = 5,
        seed: int = 0,
        table: bool = True,
        out: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Run the demo, printing through ``out``; returns what it measured."""
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
    with tempfile.TemporaryDirectory(prefix='timm-sae-demo-') as tmp:
        tmp = Path(tmp)
        checkpoint = tmp / f'{model_name}.pth'
        torch.save(model.state_dict(), checkpoint)
        folder = export_checkpoint(checkpoint, tmp / 'export' / f'{model_name}.demo', model_name=model_name)
        out(f'Exported {checkpoint.name} -> {", ".join(sorted(p.name for p in folder.iterdir()))}')
        snapshot = layout_hub_cache(folder, tmp / 'hub', repo_id)
        out(f'Hub cache: {snapshot.relative_to(tmp)}')
        with offline_hub_cache(tmp / 'hub'):
            loaded = timm.create_model(f'hf-hub:{repo_id}', pretrained=True).eval()
    with torch.inference_mode():
        identical = torch.equal(model(x), loaded(x))
    out(f"timm.create_model('hf-hub:{repo_id}', pretrained=True), offline: "
        f"outputs {'bit-identical' if identical else 'DIFFER'} to the original on a {tuple(x.shape)} batch")

    twin_name = se_twin(model_name)
    input_size = (3, img_size, img_size)
    stats = {name: describe(name, input_size) for name in (model_name, twin_name)}
    torch.manual_seed(seed)
    twin = timm.create_model(twin_name).eval()
    with torch.inference_mode():
        times = time_interleaved(
            {model_name: lambda: model(x), twin_name: lambda: twin(x)}, rounds=rounds, warmup=1)
    ratio = median_ratio(times[model_name], times[twin_name])
    out('')
    out(f'| model | params (M) | GMACs @ {img_size}px | ms / batch of {batch_size} (median of {rounds}) |')
    out('|---|---:|---:|---:|')
    for name in (model_name, twin_name):
        ms = 1e3 * statistics.median(times[name])
        out(f"| {name} | {stats[name]['params_m']:.2f} | {stats[name]['gmacs']:.2f} | {ms:.1f} |")
    out(f'{model_name} / {twin_name} time: {ratio:.3f} (median of per-round ratios, '
        f'{torch.get_num_threads()} threads, eval, fp32)')
    seconds = time.perf_counter() - start
    out(f'demo took {seconds:.1f} s')
    return dict(identical=identical, stats=stats, times=times, ratio=ratio, seconds=seconds)
