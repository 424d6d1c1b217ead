"""The path of ``timm-sae export`` and ``timm-sae convert`` through the package's modules, traced with sys.setprofile.

    python .ci/export_path.py [--code DIR]

Each Python call into a module of ``timm_sae`` is a visit; consecutive visits of one module collapse into one stop.
The model's own code, which timm calls to build and run the model (the layer, the blocks and the entrypoints'
module), is left out of the counted path; the full path, with it, is printed below. A return is a stop in a module
the path has left before. ``--code`` traces the ``timm_sae`` of another checkout (e.g. an export of a base commit).
"""
import argparse
import functools
import importlib
import importlib.util
import pkgutil
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any, Callable, List, Optional, Tuple

MODEL_MODULES = ('squeeze_aggregated_excite', 'blocks', 'sae_resnet', 'tail')


def trace(run: Callable[[], Any], package_dir: Path) -> List[str]:
    """The package modules ``run`` calls into, in order, consecutive repeats collapsed."""
    visits: List[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != 'call':
            return
        path = Path(frame.f_code.co_filename)
        if path.parent == package_dir and path.suffix == '.py':
            if not visits or visits[-1] != path.stem:
                visits.append(path.stem)

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return visits


def counted(stops: List[str]) -> List[str]:
    """The stops without the model's own modules, consecutive repeats collapsed again."""
    kept: List[str] = []
    for stop in stops:
        if stop not in MODEL_MODULES and (not kept or kept[-1] != stop):
            kept.append(stop)
    return kept


def returns(stops: List[str]) -> int:
    """How many stops go back into a module the path has already left."""
    return sum(stop in stops[:i] for i, stop in enumerate(stops))


def _cases(tmp: Path) -> List[Tuple[str, List[str]]]:
    import timm
    import torch

    spec = importlib.util.spec_from_file_location('export_examples', Path(__file__).with_name('export_examples.py'))
    examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(examples)
    torch.manual_seed(0)
    state_dict = tmp / 'saeresnet18.pth'
    torch.save(timm.create_model('saeresnet18').state_dict(), state_dict)
    resnet = tmp / 'resnet18.pth'
    torch.save(timm.create_model('resnet18').state_dict(), resnet)
    examples.hub_cache(tmp / 'hub', 'timm/resnet18.a1_in1k', timm.create_model('resnet18').state_dict())
    import huggingface_hub
    huggingface_hub.constants.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_CACHE = True, str(tmp / 'hub')
    return [
        ('export STATE_DICT OUT --model saeresnet18',
         ['export', str(state_dict), str(tmp / 'a'), '--model', 'saeresnet18']),
        ('convert FILE OUT --model resnet18', ['convert', str(resnet), str(tmp / 'b'), '--model', 'resnet18']),
        ('convert resnet18.a1_in1k OUT (Hub cache)', ['convert', 'resnet18.a1_in1k', str(tmp / 'c')]),
    ]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--code', type=Path, help='checkout whose timm_sae to trace (default: the installed one)')
    args = parser.parse_args(argv)
    if args.code:
        sys.path.insert(0, str(args.code.resolve()))
    import timm_sae
    for module in pkgutil.iter_modules(timm_sae.__path__):  # nothing is imported while traced
        importlib.import_module(f'timm_sae.{module.name}')
    from timm_sae.cli import main as cli
    package_dir = Path(timm_sae.__file__).resolve().parent
    print(f'timm_sae from {package_dir}')
    with tempfile.TemporaryDirectory() as tmp:
        for title, command in _cases(Path(tmp)):
            stops = trace(functools.partial(cli, command), package_dir)
            path = counted(stops)
            print(f'\ntimm-sae {title}')
            print(f'  {len(path)} stops, {returns(path)} returns: {" > ".join(path)}')
            print(f'  with the model\'s modules: {" > ".join(stops)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
