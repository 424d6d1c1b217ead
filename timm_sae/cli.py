"""``timm-sae`` command line: a thin layer over the package's modules."""
import argparse
import sys
from typing import List, Optional

import timm

from . import __version__
from .measure import describe, se_twin


def _list(args: argparse.Namespace) -> int:
    """Print the SaE family as a markdown table: params, GMACs, SE twin, tags."""
    size = args.img_size
    print(f'| model | params (M) | GMACs @ {size}px | SE twin | twin params (M) | tags |')
    print('|---|---:|---:|---|---:|---|')
    for name in timm.list_models('sae*'):
        sae, twin = describe(name, (3, size, size)), se_twin(name)
        twin_params = describe(twin, (3, size, size))['params_m']
        tags = ', '.join(t.split('.', 1)[1] for t in timm.list_models(name, include_tags=True))
        print(f"| {name} | {sae['params_m']:.2f} | {sae['gmacs']:.2f} | {twin} | {twin_params:.2f} | {tags} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-sae', description='Squeeze aggregated Excitation (SaE) networks for timm.')
    parser.add_argument('--version', action='version', version=f'timm-sae {__version__}')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = commands.add_parser('list', help='table of the SaE family: params, GMACs, SE twin, tags')
    p.add_argument('--img-size', type=int, default=224, help='input size for GMACs (default 224)')
    p.set_defaults(func=_list)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
