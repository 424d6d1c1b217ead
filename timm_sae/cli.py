"""``timm-sae`` command line: a thin layer over the package's modules."""
import argparse
import sys
from typing import List, Optional

from timm.utils import ParseKwargs

from . import __version__
from .cards import write_card
from .demo import run_demo
from .errors import ScriptNotFoundError, TimmSaeError
from .family import family_table
from .hub import export_checkpoint, export_conversion, push_folder
from .run import run_script


def _list(args: argparse.Namespace) -> int:
    """Print the SaE family as a markdown table: params, GMACs, SE twin, tags."""
    print('\n'.join(family_table(args.img_size)))
    return 0


def _export(args: argparse.Namespace) -> int:
    folder = export_checkpoint(
        args.checkpoint, args.output_dir, model_name=args.model, use_ema=args.ema, num_classes=args.num_classes,
        in_chans=args.in_chans, model_kwargs=args.model_kwargs, label_names=args.label_names,
        results=args.card_results, overwrite=args.overwrite,
        allow_nonfinite=args.allow_nonfinite)
    print(f'exported {args.checkpoint} to {folder}')
    return 0


def _convert(args: argparse.Namespace) -> int:
    folder = export_conversion(
        args.source, args.output_dir, source_model=args.model, use_ema=args.ema, model_kwargs=args.model_kwargs,
        overwrite=args.overwrite, allow_nonfinite=args.allow_nonfinite)
    print(f'converted {args.source} to {folder} (exact: the SaE layers are untrained until fine-tuned)')
    return 0


def _push(args: argparse.Namespace) -> int:
    commit = push_folder(
        args.dir, args.repo_id, token=args.token, private=args.private, revision=args.revision,
        create_pr=args.create_pr, commit_message=args.commit_message, update_card=args.update_card)
    print(f'pushed {args.dir} to {getattr(commit, "pr_url", None) or getattr(commit, "commit_url", args.repo_id)}')
    return 0


def _card(args: argparse.Namespace) -> int:
    print(f'wrote {write_card(args.dir)}')
    return 0


def _run(args: argparse.Namespace) -> int:
    return run_script(args.script, args.args)


def _demo(args: argparse.Namespace) -> int:
    result = run_demo(args.model, img_size=args.img_size, batch_size=args.batch_size, rounds=args.rounds)
    return 0 if result['ok'] else 1


def _add_allow_nonfinite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--allow-nonfinite', action='store_true',
                        help='keep weights that hold NaN or inf (default: refuse them, naming the tensors)')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-sae', description='Squeeze aggregated Excitation (SaE) networks for timm.')
    parser.add_argument('--version', action='version', version=f'timm-sae {__version__}')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = commands.add_parser('list', help='table of the SaE family: params, GMACs, SE twin, tags')
    p.add_argument('--img-size', type=int, default=224, help='input size for GMACs (default 224)')
    p.set_defaults(func=_list)

    p = commands.add_parser(
        'export', help='checkpoint -> Hub folder (model.safetensors, config.json, README.md)',
        description='Export a timm train.py checkpoint, state dict or .safetensors file to a folder that '
                    'timm-sae push uploads and timm.create_model("hf-hub:ORG/NAME", pretrained=True) loads.')
    p.add_argument('checkpoint', help='last.pth.tar / model_best.pth.tar, a state dict (.pth, .bin) or .safetensors')
    p.add_argument('output_dir', help='folder to create')
    p.add_argument('--model', help="architecture (default: the checkpoint's arch)")
    p.add_argument('--ema', action='store_true', help='export the EMA weights (state_dict_ema)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    p.add_argument('--num-classes', type=int, help="classifier size (default: the checkpoint's)")
    p.add_argument('--in-chans', type=int, help="input channels (default: the checkpoint's)")
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='K=V',
                   help='entrypoint arguments, e.g. sae_cardinality=8')
    p.add_argument('--label-names', metavar='FILE', help='class names: a JSON list or one name a line')
    p.add_argument('--card-results', metavar='FILE', help='results file of the weights, for the model card')
    _add_allow_nonfinite(p)
    p.set_defaults(func=_export)

    p = commands.add_parser(
        'convert', help='timm ResNet / SE-ResNet weights -> exact SaE conversion, as a Hub folder',
        description='Convert timm plain ResNet weights (into either gate) or SE-ResNet weights (into the plain gate, '
                    'sae_residual=False) exactly into the SaE twin: the result computes the source\'s function, its '
                    'SaE layers untrained until fine-tuned. Writes the folder timm-sae export writes.')
    p.add_argument('source', help='timm name with tag (resnet50.a1_in1k, seresnext26d_32x4d.bt_in1k), hf-hub:ORG/NAME, '
                                  'or a checkpoint of a timm ResNet (.pth.tar, .pth, .safetensors)')
    p.add_argument('output_dir', help='folder to create')
    p.add_argument('--model', help="architecture of a checkpoint source, e.g. resnet50 (default: the checkpoint's)")
    p.add_argument('--ema', action='store_true', help="convert a checkpoint's EMA weights")
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='K=V',
                   help='SaE arguments, e.g. sae_cardinality=8 (an SE source gets sae_residual=False)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    _add_allow_nonfinite(p)
    p.set_defaults(func=_convert)

    p = commands.add_parser(
        'push', help='upload an exported folder to the Hugging Face Hub',
        description='Upload a folder made by timm-sae export. The token is --token, else HF_TOKEN, else the '
                    'saved login (hf auth login). A README already on the Hub is kept unless --update-card.')
    p.add_argument('dir', help='folder made by timm-sae export')
    p.add_argument('--repo-id', required=True, metavar='ORG/NAME', help='Hub repository (created if missing)')
    p.add_argument('--private', action='store_true', help='create the repository private')
    p.add_argument('--revision', help='branch to push to (created if missing)')
    p.add_argument('--create-pr', action='store_true', help='open a pull request instead of committing')
    p.add_argument('--commit-message', default='Add model', help='(default: "Add model")')
    p.add_argument('--token', help='Hugging Face token with write access')
    p.add_argument('--update-card', action='store_true', help='replace a README already on the Hub')
    p.set_defaults(func=_push)

    p = commands.add_parser('card', help='render hub_cards/<arch>.<tag>/README.md from its results.json')
    p.add_argument('dir', help='card folder, hub_cards/<arch>.<tag>')
    p.set_defaults(func=_card)

    p = commands.add_parser(
        'run', help="run a script of timm's source (validate.py, train.py, ...) with the SaE models registered")
    p.add_argument('script', help="path of the script, e.g. pytorch-image-models/validate.py")
    p.add_argument('args', nargs=argparse.REMAINDER, help="the script's arguments")
    p.set_defaults(func=_run)

    p = commands.add_parser('demo', help='offline tour: family, Hub export and reload, warm start, speed vs SE twin')
    p.add_argument('--model', default='saeresnet50', help='model (default saeresnet50)')
    p.add_argument('--img-size', type=int, default=224, help='input size (default 224)')
    p.add_argument('--batch-size', type=int, default=4, help='batch size for timing (default 4)')
    p.add_argument('--rounds', type=int, default=15, help='timed rounds (default 15)')
    p.set_defaults(func=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TimmSaeError as e:
        print(f'timm-sae {args.command}: error: {e}', file=sys.stderr)
        return 2 if isinstance(e, ScriptNotFoundError) else 1


if __name__ == '__main__':
    sys.exit(main())
