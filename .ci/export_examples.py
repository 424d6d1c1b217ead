"""Write every kind of export, conversion and card with the ``timm-sae`` command into a folder, to compare two trees.

    python .ci/export_examples.py OUT [--code DIR]

Seeded checkpoints (a state dict, train.py checkpoints with arguments, plain and SE timm ResNets) and a Hub cache of
stand-in weights for ``resnet18.a1_in1k`` go into ``OUT/inputs``; each command writes ``OUT/<name>``. ``--code``
runs the ``timm_sae`` of another checkout (default: the one Python imports), so that the outputs of two commits can
be compared with ``diff -r``: ``.ci/same_exports.sh`` does that against a base commit.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import timm
import torch
from safetensors.torch import save_file

HUB_CARD = Path(__file__).resolve().parents[1] / 'hub_cards' / 'saeresnet18.fmnist'


def _seeded(name: str, seed: int = 0, **kwargs) -> Dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs).state_dict()


def _train_checkpoint(path: Path, state_dict: Dict[str, torch.Tensor], **args) -> Path:
    torch.save({'arch': args['model'], 'state_dict': state_dict, 'args': argparse.Namespace(**args)}, path)
    return path


def hub_cache(cache: Path, repo_id: str, state_dict: Dict[str, torch.Tensor]) -> None:
    """``state_dict`` as the weights of ``repo_id`` in a Hub cache laid out as huggingface_hub reads it (this
    script also runs the timm_sae of commits without timm_sae._testing)."""
    repo = cache / f'models--{repo_id.replace("/", "--")}'
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / 'snapshots' / commit).mkdir(parents=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    save_file(state_dict, repo / 'snapshots' / commit / 'model.safetensors')


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out', type=Path)
    parser.add_argument('--code', type=Path, help='checkout whose timm_sae runs the commands')
    args = parser.parse_args(argv)
    out = args.out.resolve()
    inputs = out / 'inputs'
    inputs.mkdir(parents=True)
    import timm_sae  # noqa: F401  the conversion tags of the family

    sd18 = inputs / 'saeresnet18.pth'
    torch.save(_seeded('saeresnet18', sae_cardinality=8), sd18)
    fmnist = _train_checkpoint(
        inputs / 'fmnist.pth.tar', _seeded('saeresnet18', num_classes=10, in_chans=1), model='saeresnet18',
        num_classes=10, in_chans=1, input_size=[1, 32, 32], mean=[0.286181], std=[0.353075], crop_pct=1.0)
    se_tag = timm.list_pretrained('saeresnext26d_32x4d.seresnext*')[0]
    se_run = _train_checkpoint(
        inputs / 'se_run.pth.tar', _seeded(se_tag, num_classes=5, sae_residual=False), model=se_tag,
        pretrained=True, num_classes=5, model_kwargs={'sae_cardinality': 4})
    labels = inputs / 'labels.txt'
    labels.write_text('\n'.join(f'class {i}' for i in range(5)))
    r18 = inputs / 'resnet18.safetensors'
    save_file(_seeded('resnet18', zero_init_last=False), r18)
    se18 = inputs / 'seresnet18.pth'
    torch.save(_seeded('seresnet18', num_classes=7), se18)
    cache = inputs / 'hub'
    hub_cache(cache, 'timm/resnet18.a1_in1k', _seeded('resnet18', 1, zero_init_last=False))
    card = out / 'saeresnet18.fmnist'
    card.mkdir()
    shutil.copy(HUB_CARD / 'results.json', card / 'results.json')

    commands = [
        ['export', str(sd18), str(out / 'export_state_dict'), '--model', 'saeresnet18',
         '--model-kwargs', 'sae_cardinality=8'],
        ['export', str(fmnist), str(out / 'export_results'), '--card-results', str(HUB_CARD / 'results.json')],
        ['export', str(fmnist), str(out / 'export_train')],
        ['export', str(se_run), str(out / 'export_se_run'), '--label-names', str(labels)],
        ['convert', str(r18), str(out / 'convert_file'), '--model', 'resnet18', '--model-kwargs', 'sae_residual=False'],
        ['convert', str(se18), str(out / 'convert_se_file'), '--model', 'seresnet18'],
        ['convert', 'resnet18.a1_in1k', str(out / 'convert_tag')],
        ['card', str(card)],
    ]
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache))
    code = args.code.resolve() if args.code else None
    if code:
        env['PYTHONPATH'] = os.pathsep.join([str(code), env.get('PYTHONPATH', '')])
    for command in commands:
        subprocess.run([sys.executable, '-m', 'timm_sae.cli', *command], check=True, env=env, cwd=code)
    shutil.rmtree(inputs)
    return 0


if __name__ == '__main__':
    sys.exit(main())
