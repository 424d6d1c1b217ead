"""What the tests, the demo and CI's scripts share: the tolerance of an exact conversion, the relative logit error,
and a Hugging Face Hub cache laid out on disk and read offline. Private: no stable API."""
import hashlib
import os
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Optional, Union
from unittest import mock

import huggingface_hub
import torch

PathLike = Union[str, os.PathLike]

# max |converted logits - source logits| / max |source logits| of an exact conversion. Exact in real arithmetic;
# in fp32 the BatchNorm divided by the gate g (plain sources), the multiply by g and the wider SaE matrices (SE
# sources) round in their own way, and the networks carry those last-bit differences forward; the bound leaves
# room for the deepest models.
EXACT_RTOL = 1e-5


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: how far logits are from the reference's, relative to its largest."""
    return ((actual - expected).detach().abs().max() / expected.detach().abs().max().clamp_min(1e-300)).item()


def hub_snapshot(cache_dir: PathLike, repo_id: str, commit: Optional[str] = None, revision: str = 'main') -> Path:
    """The folder of ``repo_id``'s files in a Hub cache laid out as huggingface_hub reads it (not created): its
    ``refs/<revision>`` names ``commit`` (default: the SHA-1 of the repository id), whose snapshot folder this is."""
    repo = Path(cache_dir) / f'models--{repo_id.replace("/", "--")}'
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / 'refs').mkdir(parents=True, exist_ok=True)
    (repo / 'refs' / revision).write_text(commit)
    return repo / 'snapshots' / commit


def layout_hub_cache(folder: PathLike, cache_dir: PathLike, repo_id: str, revision: str = 'main') -> Path:
    """Copy an exported folder into a Hub cache as ``repo_id`` at ``revision`` (commit: the SHA-1 of its files);
    returns the snapshot. Within ``offline_hub_cache(cache_dir)``, or in a process started with
    ``HF_HUB_OFFLINE=1 HF_HUB_CACHE=<cache_dir>``, ``create_model('hf-hub:ORG/NAME', pretrained=True)`` loads it."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    snapshot = hub_snapshot(cache_dir, repo_id, digest.hexdigest(), revision)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, snapshot / path.name)
    return snapshot


def offline_hub_cache(cache_dir: PathLike) -> AbstractContextManager[Any]:
    """Within the block, huggingface_hub is offline and reads ``cache_dir`` as its Hub cache (its constants are read
    at call time; the HF_HUB_OFFLINE / HF_HUB_CACHE environment variables only at import)."""
    return mock.patch.multiple(huggingface_hub.constants, HF_HUB_OFFLINE=True, HF_HUB_CACHE=str(cache_dir))
