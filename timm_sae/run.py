"""Run a script of timm's source repository with the SaE models registered.

    python -m timm_sae.run [--accelerate] SCRIPT [ARGS ...]      (or: timm-sae run ...)

timm's validate.py, benchmark.py and inference.py have no hook to import a model package before
``create_model``; this imports ``timm_sae`` and then runs SCRIPT as ``python SCRIPT ARGS`` would
(``__name__ == '__main__'``, ``sys.argv``, the script's folder first on ``sys.path``), so
``--model saeresnet50`` and ``--model hf-hub:ORG/NAME`` of SaE weights work. Its exit status is
passed through. The scripts come with timm's source (https://github.com/huggingface/pytorch-image-models,
at the tag of the installed timm), not with the pip package. train.py can also do without the
runner: ``train.py --device-modules timm_sae ...`` (under ``torchrun`` too). ``--accelerate`` first imports
``timm_sae.accelerate_all``, so that timm's SE, ECA and SaE ResNets build with the exact fast forms.
"""
import runpy
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import timm

import timm_sae  # noqa: F401  registers the SaE models, the point of this module
from timm_sae.errors import ScriptNotFoundError

__all__ = ['ScriptNotFoundError', 'run_script', 'main']

USAGE = 'usage: python -m timm_sae.run [--accelerate] SCRIPT [ARGS ...]'


def run_script(script: str, args: Sequence[str] = ()) -> int:
    """Run ``script`` with ``args`` as its command line; returns its exit status."""
    path = Path(script)
    if not path.is_file():
        raise ScriptNotFoundError(
            f'{script}: no such script; give the path of a script in a checkout of timm\'s source '
            f'(git clone -b v{timm.__version__} https://github.com/huggingface/pytorch-image-models)')
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.resolve().parent))
    try:
        runpy.run_path(str(path), run_name='__main__')
    except SystemExit as e:
        return _exit_status(e.code)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


def _exit_status(code: object) -> int:
    """The process exit status of ``sys.exit(code)``: a message is printed and gives 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == '--accelerate':
        import timm_sae.accelerate_all  # noqa: F401  (the opt-in: timm's ResNets build accelerated)
        argv = argv[1:]
    if not argv or argv[0] in ('-h', '--help'):
        print(USAGE, file=sys.stderr)
        return 0 if argv else 2
    try:
        return run_script(argv[0], argv[1:])
    except ScriptNotFoundError as e:
        print(f'timm_sae.run: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
