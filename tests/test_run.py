"""The runner for timm's scripts, and a distributed (DDP, gloo, 2 processes) training step (slow)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import timm_sae  # noqa: F401
from timm_sae.cli import main as cli_main
from timm_sae.run import ScriptNotFoundError, main, run_script

SCRIPT = '''\
import json, sys
import timm
print(json.dumps(dict(
    name=__name__, argv=sys.argv, registered=timm.is_model('saeresnet18'),
    path0=sys.path[0])))
code = sys.argv[1] if len(sys.argv) > 1 else 'none'
if code == 'message':
    sys.exit('stopped with a message')
if code != 'none':
    sys.exit(int(code))
'''


@pytest.fixture
def script(tmp_path):
    path = tmp_path / 'validate.py'
    path.write_text(SCRIPT)
    return path


def _seen(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_runner_passes_arguments_and_registers_models(script, capsys):
    argv = list(sys.argv)
    assert run_script(str(script), ['0', '--model', 'saeresnet18', '--model-kwargs', 'sae_cardinality=8']) == 0
    seen = _seen(capsys)
    assert seen['name'] == '__main__' and seen['registered']
    assert seen['argv'] == [str(script), '0', '--model', 'saeresnet18', '--model-kwargs', 'sae_cardinality=8']
    assert seen['path0'] == str(script.parent)
    assert sys.argv == argv and sys.path[0] != str(script.parent)


@pytest.mark.parametrize('args,code', [([], 0), (['0'], 0), (['3'], 3), (['message'], 1)])
def test_runner_exit_codes(script, args, code, capsys):
    assert run_script(str(script), args) == code
    if args == ['message']:
        assert 'stopped with a message' in capsys.readouterr().err


def test_missing_script(tmp_path, capsys):
    with pytest.raises(ScriptNotFoundError, match='pytorch-image-models'):
        run_script(str(tmp_path / 'train.py'))
    assert main([str(tmp_path / 'train.py')]) == 2
    assert main([]) == 2
    assert cli_main(['run', str(tmp_path / 'train.py')]) == 2
    err = capsys.readouterr().err
    assert 'timm-sae run: error:' in err and 'no such script' in err


def test_cli_run_passes_options_through(script, capsys):
    assert cli_main(['run', str(script), '5', '--help', '--model', 'saeresnet18']) == 5
    assert _seen(capsys)['argv'][1:] == ['5', '--help', '--model', 'saeresnet18']


@pytest.mark.slow
def test_module_entry_point(script):
    """``python -m timm_sae.run`` in a fresh interpreter: models registered, exit status passed through.

    Slow: the fresh interpreter imports torch and timm; the tests above run the same
    ``main`` in this process."""
    done = subprocess.run(
        [sys.executable, '-m', 'timm_sae.run', str(script), '4', '--flag'],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert done.returncode == 4, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen['registered'] and seen['argv'][1:] == ['4', '--flag']


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        'gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world_size)
    try:
        torch.manual_seed(rank)  # each rank starts from its own weights: DDP must broadcast rank 0's
        # zero_init_last=False: with timm's zero-initialised last BN the SaE input, so its gradient, is 0 at first
        model = timm.create_model('saeresnet18', num_classes=3, sae_cardinality=2, zero_init_last=False)
        ddp = DistributedDataParallel(model)
        start = {k: v.detach().clone() for k, v in model.named_parameters()}
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.5)
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own batch
        x, y = torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 3, (2,), generator=g)
        F.cross_entropy(ddp(x), y).backward()
        optimizer.step()
        end = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save(dict(start=start, end=end), Path(out_dir) / f'rank{rank}.pt')
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_step_keeps_ranks_identical(tmp_path):
    """Slow: two fresh processes import torch and timm and train a step."""
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2)]
    for key in ranks[0]['end']:
        assert torch.equal(ranks[0]['start'][key], ranks[1]['start'][key]), key
        assert torch.equal(ranks[0]['end'][key], ranks[1]['end'][key]), key
    changed = [k for k in ranks[0]['end'] if not torch.equal(ranks[0]['start'][k], ranks[0]['end'][k])]
    assert {'layer1.0.se.fc_branches.weight', 'layer4.1.se.fc_excite.bias', 'fc.weight'} <= set(changed)
