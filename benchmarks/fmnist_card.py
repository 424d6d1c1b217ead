"""The model card of the Fashion-MNIST saeresnet18 weights, generated from the accuracy results.

    python benchmarks/fmnist_card.py [--results benchmarks/results/accuracy.json]

Takes the saeresnet18 run of seed 0 from the accuracy benchmark's JSON (its checkpoint is the one
chosen on the validation split, saved as runs/fmnist/saeresnet18_seed0.pth.tar), writes
``hub_cards/saeresnet18.fmnist/results.json`` in the schema of ``timm_sae.cards`` and renders the
card ``README.md`` next to it. Nothing in the card is typed by hand.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

# run as a file (python benchmarks/fmnist_card.py): import the package from the repository
if __package__ in (None, ''):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.accuracy import PATHS
from benchmarks.common import REPO_ROOT
from timm_sae.cards import RESULTS_NAME, write_card

CARD_DIR = REPO_ROOT / 'hub_cards' / 'saeresnet18.fmnist'
CONFIG, SEED = 'saeresnet18', 0
CHECKPOINT = 'runs/fmnist/saeresnet18_seed0.pth.tar'


def card_results(accuracy: Dict[str, Any]) -> Dict[str, Any]:
    """The results file of the card, from the accuracy benchmark's JSON."""
    runs = [r for r in accuracy['runs'] if r['config'] == CONFIG and r['seed'] == SEED]
    if not runs:
        raise SystemExit(f'no {CONFIG} seed {SEED} run in the results: run benchmarks/accuracy.py first')
    run, protocol = runs[0], accuracy['protocol']
    command = next(c for c in accuracy['commands'] if 'accuracy.py' in c)
    return {
        'model': run['model'],
        'tag': 'fmnist',
        'dataset': {'id': 'zalando-datasets/fashion_mnist', 'name': 'Fashion-MNIST', 'split': 'test'},
        'metrics': {
            'top1': run['test_top1'],
            'loss': round(run['test_loss'], 4),
        },
        'params': run['params'],
        'gmacs': round(run['gmacs'], 4),
        'img_size': protocol['input_size'][1:],
        'in_chans': protocol['input_size'][0],
        'num_classes': run['checkpoint']['num_classes'],
        'model_args': run['model_kwargs'],
        'recipe': {
            'seed': SEED,
            'checkpoint': f"epoch {run['checkpoint']['epoch']} of {protocol['epochs']}, the best validation "
                          f"top-1 ({run['best_val_top1']} on {protocol['val_images']} held-out training images)",
            **{k: protocol[k] for k in (
                'train_images', 'val_images', 'preprocessing', 'mean', 'std', 'augmentation', 'optimizer',
                'lr', 'weight_decay', 'schedule', 'warmup_epochs', 'epochs', 'batch_size', 'label_smoothing',
                'precision')},
        },
        'command': command,
        'versions': accuracy['versions'],
        'hardware': run['hardware'],
        'checkpoint': CHECKPOINT,
    }


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--results', type=Path, default=PATHS.results)
    args = parser.parse_args(argv)
    CARD_DIR.mkdir(parents=True, exist_ok=True)
    results = card_results(json.loads(args.results.read_text()))
    (CARD_DIR / RESULTS_NAME).write_text(json.dumps(results, indent=2) + '\n')
    card = write_card(CARD_DIR)
    print(f'wrote {CARD_DIR / RESULTS_NAME} and {card}')
    return card


if __name__ == '__main__':
    main()
