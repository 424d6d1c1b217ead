"""The Fashion-MNIST accuracy benchmark: IDX loader, batched augmentation, --quick sweep, resume and report, and
the generated sections of the docs.

Everything runs offline on tiny synthetic IDX files written to a temporary directory.
"""
import gzip
import json
import re

import numpy as np
import pytest
import torch

from benchmarks import accuracy, accuracy_report, common, fashion_mnist, stats, sweep
from conftest import make_dataset, write_idx
from timm_sae.measure import describe


def test_loader_reads_idx_files(tmp_path):
    arrays = make_dataset(tmp_path)
    data = fashion_mnist.load_fashion_mnist(tmp_path)
    assert data['train_images'].shape == (200, 28, 28) and data['train_images'].dtype == np.uint8
    assert data['test_images'].shape == (50, 28, 28)
    np.testing.assert_array_equal(data['train_images'], arrays['train_images'])
    np.testing.assert_array_equal(data['test_labels'], arrays['test_labels'])
    assert data['train_labels'].dtype == np.int64


def test_loader_names_the_package_when_files_are_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match='apt-get install -y dataset-fashion-mnist'):
        fashion_mnist.load_fashion_mnist(tmp_path)


@pytest.mark.parametrize('damage', ['magic', 'truncated', 'not_gzip', 'label_count', 'label_range'])
def test_loader_rejects_corrupt_files(tmp_path, damage):
    make_dataset(tmp_path)
    images = tmp_path / fashion_mnist.FILES['train_images']
    labels = tmp_path / fashion_mnist.FILES['train_labels']
    if damage == 'magic':
        write_idx(images, np.zeros((200, 28), dtype=np.uint8))  # a 2-dim IDX file: magic 0x0802
        match = 'magic number 0x00000802, expected 0x00000803'
    elif damage == 'truncated':
        raw = gzip.decompress(images.read_bytes())
        images.write_bytes(gzip.compress(raw[:-100]))
        match = 'truncated or corrupt'
    elif damage == 'not_gzip':
        images.write_bytes(b'not a gzip file at all')
        match = 'not a readable gzip file'
    elif damage == 'label_count':
        write_idx(labels, np.zeros(199, dtype=np.uint8))
        match = '200 images but 199 labels'
    else:
        write_idx(labels, np.full(200, 10, dtype=np.uint8))
        match = r'labels reach 10, expected 0\.\.9'
    with pytest.raises(fashion_mnist.CorruptDataError, match=match):
        fashion_mnist.load_fashion_mnist(tmp_path)


def test_validation_split_is_fixed_and_disjoint():
    train, val = fashion_mnist.train_val_indices(1000, 100, seed=0)
    train2, val2 = fashion_mnist.train_val_indices(1000, 100, seed=0)
    np.testing.assert_array_equal(val, val2)
    assert len(val) == 100 and len(train) == 900
    assert not set(train) & set(val) and set(train) | set(val) == set(range(1000))
    with pytest.raises(ValueError, match='validation size'):
        fashion_mnist.train_val_indices(10, 10, seed=0)


def test_random_crop_flip_is_a_crop_or_flipped_crop_of_the_padded_input():
    x = torch.rand(64, 2, 8, 8)
    out = fashion_mnist.random_crop_flip(x, 3, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    flips = []
    for i in range(len(x)):
        matches = [(dy, dx, flip) for dy in range(7) for dx in range(7) for flip in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert matches, f'sample {i} is not a crop/flip of its input'
        flips.append(matches[0][2])
    assert 0 < sum(flips) < len(flips)  # both flipped and unflipped samples occur


def test_quick_sweep_records_everything_and_resumes(data_dir, tmp_path, single_thread):
    results_path, checkpoints = tmp_path / 'acc.json', tmp_path / 'ckpt'
    argv = ['--quick', '--device', 'cpu', '--data-dir', str(data_dir), '--results', str(results_path),
            '--checkpoint-dir', str(checkpoints)]
    results = accuracy.main(argv)
    saved = json.loads(results_path.read_text())
    assert saved == results
    for key in ('protocol', 'versions', 'hardware', 'commands', 'wall_time_s', 'runs', 'missing', 'invocations'):
        assert key in saved, key
    assert set(saved['versions']) == {'python', 'torch', 'timm', 'timm_sae', 'numpy'}
    assert saved['protocol']['quick'] and saved['protocol']['val_images'] == 40
    assert 'never for selection' in saved['protocol']['selection']
    assert saved['missing'] == []
    assert [(r['config'], r['seed']) for r in saved['runs']] == [('resnet18', 0), ('saeresnet18', 0)]
    for run in saved['runs']:
        for key in ('model', 'model_kwargs', 'test_top1', 'test_loss', 'best_val_top1', 'best_epoch', 'params',
                    'gmacs', 'train_time_s', 'train_images_per_s'):
            assert key in run, key
        assert set(run['curve']) >= {'train_loss', 'val_top1', 'test_top1'} and len(run['curve']['val_top1']) == 1
        assert run['test_top1'] == run['curve']['test_top1'][run['best_epoch'] - 1]
    ckpt_info = saved['runs'][1]['checkpoint']
    assert ckpt_info['input_size'] == [1, 32, 32] and ckpt_info['mean'] == saved['protocol']['mean']
    ckpt = torch.load(checkpoints / 'saeresnet18_seed0.pth.tar', map_location='cpu')
    assert ckpt['arch'] == 'saeresnet18' and ckpt['args']['in_chans'] == 1 and ckpt['epoch'] == 1
    import timm
    timm.create_model('saeresnet18', in_chans=1, num_classes=10).load_state_dict(ckpt['state_dict'])

    again = accuracy.main(argv)  # resume: nothing left to train
    assert len(again['runs']) == 2 and again['invocations'][-1]['runs_finished'] == 0
    assert len(again['commands']) == 2

    with pytest.raises(SystemExit, match='different protocol .*epochs'):
        accuracy.main(argv + ['--epochs', '2'])

    md, png = accuracy_report.main(['--results', str(results_path), '--out-dir', str(tmp_path / 'report')])
    assert 'Quick smoke protocol: not a result' in md.read_text()
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_time_budget_stops_before_any_run_and_lists_missing(data_dir, tmp_path):
    results = accuracy.main(['--quick', '--device', 'cpu', '--data-dir', str(data_dir), '--results',
                             str(tmp_path / 'acc.json'), '--time-budget', '0', '--seeds', '2'])
    assert results['runs'] == [] and results['invocations'][-1]['stopped_by_time_budget']
    assert results['missing'] == [{'config': c, 'seed': s} for s in (0, 1) for c in accuracy.QUICK_CONFIGS]


@pytest.mark.slow
def test_workers_train_runs_in_spawned_processes(data_dir, tmp_path):
    results = accuracy.main(['--quick', '--device', 'cpu', '--data-dir', str(data_dir), '--results',
                             str(tmp_path / 'acc.json'), '--checkpoint-dir', str(tmp_path), '--workers', '2',
                             '--configs', 'resnet18_eca', 'saeresnet18_k2'])
    assert sorted(r['config'] for r in results['runs']) == ['resnet18_eca', 'saeresnet18_k2']
    assert results['missing'] == [] and results['invocations'][-1]['workers'] == 2


def test_welch_interval():
    assert stats.welch_interval([1.], [1., 2.]) is None
    assert stats.welch_interval([2., 2.], [1., 1., 1.]) == (1., 1., 1.)
    diff, low, high = stats.welch_interval([1., 2., 3.], [1., 2., 3., 4., 5.])
    # Hand-computed: diff -1, se^2 = 1/3 + 2.5/5 = 5/6, df = (5/6)^2 / ((1/3)^2/2 + (1/2)^2/4) = 5.88,
    # t_{0.975, 5.88} = 2.4588 (from a t table)
    assert diff == pytest.approx(-1.)
    assert (high - low) / 2 == pytest.approx(2.4588 * (5 / 6) ** 0.5, abs=1e-4)
    assert (low + high) / 2 == pytest.approx(-1.)


def fabricated_results(without: tuple = ()) -> dict:
    """A structurally valid results document: 3 seeds of most configurations, 1 of one, two runs missing, none of
    the configurations in ``without``; the SaE configurations 0.3 points above the others, saeresnet18_rd8 another
    0.5 above."""
    runs = []
    for config, (model, kwargs) in accuracy.CONFIGS.items():
        if config in without:
            continue
        for seed in range(1 if config == 'resnet18_cbam' else 3):
            top1 = (92. + 0.1 * seed + (0.3 if model == 'saeresnet18' else 0.)
                    + (0.5 if config == 'saeresnet18_rd8' else 0.))
            runs.append({
                'config': config, 'model': model, 'model_kwargs': sweep.as_json(kwargs), 'seed': seed,
                'test_top1': top1, 'test_loss': 0.25, 'best_val_top1': top1 + 0.2, 'best_epoch': 3,
                'params': 11_200_000, 'gmacs': 0.0355,
                'curve': {'train_loss': [1.0, 0.6, 0.5], 'val_top1': [85., 90., top1 + 0.2],
                          'test_top1': [84., 89., top1]},
            })
    return {
        'protocol': {'quick': False, 'epochs': 3, 'input_size': [1, 32, 32], 'selection': 'val top-1'},
        'versions': {'python': '3.11', 'torch': '2.14.1', 'timm': '1.0.31', 'timm_sae': '0.1.0', 'numpy': '2'},
        'hardware': ['test machine'], 'commands': ['python benchmarks/accuracy.py'], 'wall_time_s': 60.,
        'invocations': [{'workers': 4}],
        'runs': runs, 'missing': [{'config': 'resnet18_cbam', 'seed': 1}, {'config': 'resnet18_cbam', 'seed': 2}],
    }


def table_rows(text: str) -> dict:
    """The rows of the markdown table(s) in ``text`` by their first cell."""
    return {line.split(' | ')[0].lstrip('| '): line for line in text.splitlines() if line.startswith('| ')}


def test_report_writes_markdown_and_png(tmp_path):
    path = tmp_path / 'accuracy.json'
    path.write_text(json.dumps(fabricated_results()))
    md, png = accuracy_report.main(['--results', str(path), '--out-dir', str(tmp_path / 'out')])
    text = md.read_text()
    assert 'Incomplete sweep: 2 requested run(s) missing' in text and '- resnet18_cbam seed 2' in text
    rows = table_rows(text)
    assert set(accuracy.CONFIGS) <= set(rows)
    assert '| 3 | 92.40 ± 0.10 | +0.30 [' in rows['saeresnet18']
    assert 'n/a (needs ≥ 2 seeds' in rows['resnet18_cbam'] and '| reference |' in rows['seresnet18']
    assert '| saeresnet18 | sae_stages=[3, 4] | 3 | 92.40 ± 0.10 |' in rows['saeresnet18_s34']
    assert 'saeresnet18 vs seresnet18: +0.30 points' in text and 'Not run yet' not in text
    # each placement and width configuration against saeresnet18 and seresnet18, worded by its interval
    for config in accuracy.PLACEMENT_AND_WIDTH:
        assert f'- {config} vs saeresnet18: ' in text and f'- {config} vs seresnet18: ' in text
    assert ('- saeresnet18_rd8 vs saeresnet18: +0.50 points, 95% CI [+0.27, +0.73] (3 vs 3 seeds); the 95% interval '
            'excludes 0: saeresnet18_rd8 is higher than saeresnet18 under this protocol.') in text
    assert ('- saeresnet18_s4 vs saeresnet18: +0.00 points, 95% CI [-0.23, +0.23] (3 vs 3 seeds); the 95% interval '
            'includes 0: no difference is detectable at this number of seeds.') in text
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_report_names_configurations_without_runs_and_says_nothing_else_about_them(tmp_path):
    path = tmp_path / 'accuracy.json'
    path.write_text(json.dumps(fabricated_results(without=accuracy.PLACEMENT_AND_WIDTH)))
    doc = tmp_path / 'doc.md'
    doc.write_text('<!-- begin accuracy: generated by x -->\n<!-- end accuracy -->\n')
    md, png = accuracy_report.main(['--results', str(path), '--out-dir', str(tmp_path / 'out'), '--doc', str(doc)])
    for text in (md.read_text(), doc.read_text()):
        line = next(line for line in text.splitlines() if line.startswith('Not run yet: '))
        assert line.startswith('Not run yet: saeresnet18_s12 (sae_stages=[1, 2]), saeresnet18_s34 (sae_stages=[3, 4]), '
                               'saeresnet18_s4 (sae_stages=[4]), saeresnet18_rd16 (sae_rd_ratio=0.0625), '
                               'saeresnet18_rd8 (sae_rd_ratio=0.125).')
        assert not set(accuracy.PLACEMENT_AND_WIDTH) & set(table_rows(text))
        assert not any(config in rest for config in accuracy.PLACEMENT_AND_WIDTH
                       for rest in text.split(line)[1].splitlines())
    assert f'From `{path}` (' in doc.read_text() and '](out/accuracy.png)' in doc.read_text()


def test_report_refuses_missing_results(tmp_path, capsys):
    with pytest.raises(SystemExit):
        accuracy_report.main(['--results', str(tmp_path / 'nope.json'), '--out-dir', str(tmp_path)])
    assert 'nope.json does not exist; run benchmarks/accuracy.py first' in capsys.readouterr().err


def test_placement_and_width_configurations_build_with_their_sizes():
    """The new configurations reach the model: SaE in fewer stages has fewer parameters, wider branches more."""
    size = {config: describe(model, (1, 32, 32), in_chans=1, num_classes=10, **kwargs)['params_m']
            for config, (model, kwargs) in accuracy.CONFIGS.items()
            if config in ('resnet18', 'saeresnet18', *accuracy.PLACEMENT_AND_WIDTH)}
    assert size['resnet18'] < size['saeresnet18_s12'] < size['saeresnet18_s4'] < size['saeresnet18_s34'] \
        < size['saeresnet18'] < size['saeresnet18_rd16'] < size['saeresnet18_rd8']


def test_gpu_run_part_trains_the_placement_and_width_configurations():
    """gpu_run.sh's accuracy_placement part names exactly the configurations the report compares."""
    script = (common.REPO_ROOT / 'benchmarks' / 'gpu_run.sh').read_text()
    part = script.split('    accuracy_placement)\n', 1)[1].split(';;', 1)[0]
    assert tuple(re.findall(r'\bsaeresnet18_\w+', part)) == accuracy.PLACEMENT_AND_WIDTH
    assert 'benchmarks/accuracy.py --device cuda --seeds 3 --workers 15' in part


# the committed results and the generated sections of the docs

DOCS = ('results.md', 'speed.md', 'pretrained.md')


def test_committed_report_and_doc_section_are_generated_from_the_committed_results():
    """results/accuracy.md and docs/results.md's accuracy section are what the report writes from the JSON."""
    json_path = common.RESULTS_DIR / 'accuracy.json'
    results = json.loads(json_path.read_text())
    assert results['missing'] == [] and len(results['runs']) >= 27
    assert (common.RESULTS_DIR / 'accuracy.md').read_text() == accuracy_report.markdown(results, json_path.name)
    doc = common.REPO_ROOT / 'docs' / 'results.md'
    assert common.doc_section(doc, 'accuracy') == accuracy_report.doc_summary(
        results, 'benchmarks/results/accuracy.json', '../benchmarks/results/accuracy.png')


@pytest.mark.parametrize('doc', DOCS)
def test_doc_sections_name_files_from_the_root_and_link_images_from_the_doc(doc):
    """One rule for every generated section: files named in the text relative to the repository root (and
    present), image links relative to the doc."""
    path = common.REPO_ROOT / 'docs' / doc
    names = re.findall(r'<!-- begin ([\w-]+): generated by benchmarks/\w+\.py -->', path.read_text())
    assert names
    for name in names:
        body = common.doc_section(path, name)
        for named in re.findall(r'`((?:benchmarks|docs|timm_sae)/[^`\s]+\.\w+)`', body):
            assert (common.REPO_ROOT / named).is_file(), (name, named)
        assert re.findall(r'^From `(benchmarks/results/[^`]+)`', body, re.MULTILINE) or name == 'conversions'
        for link in re.findall(r'!\[[^]]*\]\(([^)]+)\)', body):
            assert not link.startswith('/') and (path.parent / link).resolve().is_file(), (name, link)
