"""The environment stamp of a measurement: the command that ran it, the software versions and the hardware."""
import json
import os
import shlex
from pathlib import Path
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import torch

from timm_sae.measure import cpu_model, software_versions


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command that ran a benchmark script (its ``__file__``) with ``argv``, from the repository root."""
    return shlex.join(['python', f'benchmarks/{Path(script).name}', *argv])


def hardware(device: torch.device) -> str:
    """Human-readable description of the machine a run used."""
    text = f'{cpu_model()}, {os.cpu_count()} logical CPUs'
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        text = (f'{props.name} ({props.total_memory / 2 ** 30:.0f} GiB), CUDA {torch.version.cuda}, '
                f'cuDNN {torch.backends.cudnn.version()}; {text}')
    return text


def versions() -> Dict[str, str]:
    """Versions of the software the training results depend on."""
    return {**software_versions(), 'numpy': np.__version__}


def environment(device: str) -> Tuple[dict, dict]:
    """(versions, hardware) of a speed measurement."""
    hardware_ = {
        'cpu': cpu_model(), 'cpu_cores': os.cpu_count(), 'cpus_usable': len(os.sched_getaffinity(0)),
        'torch_threads': torch.get_num_threads(), 'load_average_at_start': os.getloadavg(),
    }
    if device.startswith('cuda'):
        hardware_.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return software_versions(), hardware_


def write_report(out: Path, report: dict, markdown: Callable[[dict], str], indent: int = 1) -> None:
    """Write a measurement's JSON and, beside it, the markdown generated from it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=indent) + '\n')
    out.with_suffix('.md').write_text(markdown(report))
    print(f'wrote {out} and {out.with_suffix(".md")}')
