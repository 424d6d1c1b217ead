"""Test helpers for the Hub format: lay an export out in a Hugging Face Hub cache, and read that cache offline."""
import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

import huggingface_hub

PathLike = Union[str, os.PathLike]


def layout_hub_cache(folder: PathLike, cache_dir: PathLike, repo_id: str, revision: str = 'main') -> Path:
    """Copy an exported folder into a Hugging Face Hub cache as ``repo_id`` at ``revision``; returns the snapshot.

    Layout: ``models--ORG--NAME/refs/<revision>`` holds a 40-hex commit id (the SHA-1 of the files),
    ``models--ORG--NAME/snapshots/<id>/`` the files. Within ``offline_hub_cache(cache_dir)`` (or in a process
    started with ``HF_HUB_OFFLINE=1 HF_HUB_CACHE=<cache_dir>``), ``create_model('hf-hub:ORG/NAME', pretrained=True)``
    loads from it.
    """
    folder, repo_dir = Path(folder), Path(cache_dir) / f'models--{repo_id.replace("/", "--")}'
    files = sorted(p for p in folder.iterdir() if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    snapshot = repo_dir / 'snapshots' / digest.hexdigest()
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, snapshot / path.name)
    (repo_dir / 'refs').mkdir(exist_ok=True)
    (repo_dir / 'refs' / revision).write_text(digest.hexdigest())
    return snapshot


@contextmanager
def offline_hub_cache(cache_dir: PathLike) -> Iterator[None]:
    """Within the block, huggingface_hub is offline and reads ``cache_dir`` as its Hub cache.

    Patches ``huggingface_hub.constants`` (read at call time; the ``HF_HUB_OFFLINE`` / ``HF_HUB_CACHE``
    environment variables are read only once, at import).
    """
    constants = huggingface_hub.constants
    saved = constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE
    constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = True, str(cache_dir)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = saved
