"""The warm-start study: --quick end to end, the epoch-0 exactness check, resumption and the report.

Everything runs offline on tiny synthetic IDX files written to a temporary directory (the label is the
image's brightness, so the models learn something in one epoch).
"""
import json

import pytest
import torch

from benchmarks import accuracy, common, sweep, training, warm_start, warm_start_report
from benchmarks.fashion_mnist import DEFAULT_DATA_DIR, fmnist_protocol, load_fashion_mnist, to_device_data

WARM_ARMS = [name for name, arm in warm_start.ARMS.items() if arm.source is not None]
CONVERTED_ARMS = [name for name, arm in warm_start.ARMS.items() if arm.convert]


# The quick study trains 7 runs: its tests are marked slow.
@pytest.fixture(scope='module')
def study(data_dir, tmp_path_factory, single_thread):
    """One finished --quick study: (argv, results path, checkpoint folder, results document)."""
    root = tmp_path_factory.mktemp('warm_start')
    results_path, checkpoints = root / 'warm_start.json', root / 'ckpt'
    argv = ['--quick', '--device', 'cpu', '--data-dir', str(data_dir), '--results', str(results_path),
            '--checkpoint-dir', str(checkpoints)]
    return argv, results_path, checkpoints, warm_start.main(argv)


def by_name(results: dict) -> dict:
    return {run['config']: run for run in results['runs']}


@pytest.mark.slow
def test_quick_study_records_every_run(study, data_dir):
    argv, results_path, checkpoints, results = study
    assert json.loads(results_path.read_text()) == results
    assert results['missing'] == []
    assert [r['config'] for r in results['runs']] == [*warm_start.SOURCES, *warm_start.ARMS]
    assert set(results['versions']) == {'python', 'torch', 'timm', 'timm_sae', 'numpy'}
    assert results['commands'] == ['python benchmarks/warm_start.py ' + ' '.join(argv)]
    protocol = results['protocol']
    # the sources' protocol is the accuracy benchmark's, for the same options
    quick_args = accuracy.parse_args(['--quick', '--data-dir', str(data_dir)])
    assert protocol['sources'] == sweep.as_json(fmnist_protocol(quick_args, load_fashion_mnist(data_dir)))
    # the sources are the accuracy benchmark's configurations of their name
    assert all(accuracy.CONFIGS[source] == (source, {}) for source in warm_start.SOURCES)
    assert protocol['scratch_epochs'] == 2 and protocol['finetune']['epochs'] == 1
    runs = by_name(results)
    for name, run in runs.items():
        assert run['role'] == ('source' if name in warm_start.SOURCES else 'arm')
        assert run['model'] == (name if name in warm_start.SOURCES else warm_start.ARMS[name].model)
        assert len(run['curve']['val_top1']) == run['schedule']['epochs']
        # the reported figure is that of the validation-chosen epoch, and epoch 0 is never chosen
        assert run['best_epoch'] >= 1
        assert run['test_top1'] == run['curve']['test_top1'][run['best_epoch'] - 1]
        assert run['best_val_top1'] == max(run['curve']['val_top1'])
    assert runs['saeresnet18_scratch']['schedule'] == {
        'lr': protocol['sources']['lr'], 'epochs': 2, 'warmup_epochs': protocol['sources']['warmup_epochs']}
    assert runs['saeresnet18_scratch']['source'] is None and runs['saeresnet18_scratch']['start'] is None
    # one fine-tuning schedule for every warm start: lr 0.01 at batch 256, cosine to 0 without warmup
    schedules = [runs[name]['schedule'] for name in WARM_ARMS]
    assert schedules == [{'lr': 0.01 * 64 / 256, 'epochs': 1, 'warmup_epochs': 0}] * len(WARM_ARMS)


@pytest.mark.slow
def test_sources_are_saved_and_arms_start_from_them(study):
    _, _, checkpoints, results = study
    runs = by_name(results)
    for source in warm_start.SOURCES:
        info = runs[source]['checkpoint']
        path = checkpoints / f'{source}_seed0.pth.tar'
        assert info['path'] == str(path) and info['sha256'] == warm_start.file_sha256(path)
        assert torch.load(path, map_location='cpu', weights_only=True)['epoch'] == runs[source]['best_epoch']
    for name in WARM_ARMS:
        arm, source = runs[name], runs[warm_start.ARMS[name].source]
        assert arm['source']['sha256'] == source['checkpoint']['sha256']
        # epoch 0 of a warm start is the source's chosen checkpoint: the same validation and test figures
        # (fp32 on the CPU, evaluated the same way), converted or not
        assert arm['start']['val_top1'] == source['best_val_top1']
        assert arm['start']['test_top1'] == source['test_top1']
        assert arm['start']['test_loss'] == pytest.approx(source['test_loss'], rel=1e-5)


@pytest.mark.slow
def test_conversions_are_exact_at_epoch_zero(study):
    runs = by_name(study[3])
    for name in CONVERTED_ARMS:
        check, source = runs[name]['conversion'], runs[warm_start.ARMS[name].source]
        assert check['test_images'] == 50 and check['predictions_differ'] == 0
        assert check['converted_test_top1'] == check['source_test_top1'] == source['test_top1']
        assert check['converted_test_loss'] == pytest.approx(check['source_test_loss'], rel=1e-5)
        assert 0 < check['max_abs_logit'] and check['max_abs_logit_diff'] <= 1e-5 * check['max_abs_logit']
    for name in set(WARM_ARMS) - set(CONVERTED_ARMS):
        assert runs[name]['conversion'] is None


def test_conversion_check_detects_a_different_function(data_dir, single_thread):
    """The check is not vacuous: a model that is not the source's function shows up in every figure."""
    data = to_device_data(load_fashion_mnist(data_dir), True, torch.device('cpu'))
    protocol = {'mean': [0.3], 'std': [0.2]}
    torch.manual_seed(0)
    source = training.create_model('resnet18').eval()
    same = training.create_model('resnet18').eval()
    same.load_state_dict(source.state_dict())
    check = warm_start.conversion_check(source, same, data, protocol)
    assert check['max_abs_logit_diff'] == 0 and check['predictions_differ'] == 0
    other = training.create_model('resnet18').eval()  # other random weights
    check = warm_start.conversion_check(source, other, data, protocol)
    assert check['max_abs_logit_diff'] > 1e-3 and check['predictions_differ'] > 0
    assert check['converted_test_loss'] != check['source_test_loss']


@pytest.mark.slow
def test_rerun_trains_nothing_and_resume_trains_only_what_is_missing(study, tmp_path):
    argv, results_path, checkpoints, results = study
    again = warm_start.main(argv)
    assert again['runs'] == results['runs'] and again['invocations'][-1]['runs_finished'] == 0
    # an interrupted study: the last two arms are missing; the rerun trains them from the saved sources
    partial = dict(results, runs=results['runs'][:-2])
    path = tmp_path / 'partial.json'
    path.write_text(json.dumps(partial))
    resumed = warm_start.main([*argv[:-4], '--results', str(path), '--checkpoint-dir', str(checkpoints)])
    assert resumed['invocations'][-1]['runs_finished'] == 2 and resumed['missing'] == []
    assert resumed['runs'][:-2] == results['runs'][:-2]
    assert [r['config'] for r in resumed['runs'][-2:]] == [r['config'] for r in results['runs'][-2:]]
    with pytest.raises(SystemExit, match='different protocol .*finetune'):
        warm_start.main(argv + ['--finetune-epochs', '2'])


@pytest.mark.slow
def test_resume_refuses_a_missing_or_changed_source_checkpoint(study, tmp_path):
    argv, results_path, checkpoints, results = study
    path = tmp_path / 'partial.json'
    path.write_text(json.dumps(dict(results, runs=[r for r in results['runs'] if r['config'] != 'resnet18_continued'])))
    empty = tmp_path / 'empty_ckpt'
    with pytest.raises(SystemExit, match='checkpoint of the finished source run resnet18 seed 0 .* is missing'):
        warm_start.main([*argv[:-4], '--results', str(path), '--checkpoint-dir', str(empty)])
    changed = tmp_path / 'changed_ckpt'
    changed.mkdir()
    (changed / 'resnet18_seed0.pth.tar').write_bytes(b'another file')
    with pytest.raises(SystemExit, match='differs from the one recorded'):
        warm_start.main([*argv[:-4], '--results', str(path), '--checkpoint-dir', str(changed)])
    assert json.loads(path.read_text())['runs'] == [r for r in results['runs'] if r['config'] != 'resnet18_continued']


def test_arguments_are_checked(capsys):
    with pytest.raises(SystemExit):
        warm_start.parse_args(['--finetune-epochs', '0'])
    assert 'error: --finetune-epochs must be at least 1' in capsys.readouterr().err
    args = warm_start.parse_args([])
    assert (args.seeds, args.epochs, args.finetune_epochs) == (3, 15, 5)
    assert args.results == common.RESULTS_DIR / 'warm_start.json'
    assert args.checkpoint_dir == common.REPO_ROOT / 'runs' / 'warm_start'


@pytest.mark.slow
def test_workers_start_arms_only_after_their_sources(data_dir, tmp_path):
    results = warm_start.main(['--quick', '--device', 'cpu', '--data-dir', str(data_dir), '--results',
                               str(tmp_path / 'ws.json'), '--checkpoint-dir', str(tmp_path), '--workers', '2'])
    assert results['missing'] == [] and results['invocations'][-1]['workers'] == 2
    order = [r['config'] for r in results['runs']]
    for name in WARM_ARMS:
        assert order.index(warm_start.ARMS[name].source) < order.index(name)
    assert all(r['conversion']['predictions_differ'] == 0 for r in results['runs'] if r.get('conversion'))


@pytest.mark.skipif(not (DEFAULT_DATA_DIR / 'train-images-idx3-ubyte.gz').is_file(),
                    reason='needs the Debian package dataset-fashion-mnist')
def test_sources_protocol_is_the_committed_accuracy_protocol():
    """The sources are trained exactly as the accuracy benchmark's committed runs were."""
    committed = json.loads((common.RESULTS_DIR / 'accuracy.json').read_text())['protocol']
    data = load_fashion_mnist(DEFAULT_DATA_DIR)
    assert warm_start.build_protocol(warm_start.parse_args([]), data)['sources'] == committed


# the report


def fabricated_results(conversion_differs: int = 0) -> dict:
    """A structurally valid study: 3 seeds, the resnet18 conversion 0.5 points above its continued source."""
    top1 = {'resnet18': 91.7, 'seresnet18': 91.3, 'saeresnet18_scratch': 91.8, 'resnet18_continued': 91.8,
            'resnet18_to_saeresnet18': 92.3, 'seresnet18_continued': 91.4,
            'seresnet18_to_saeresnet18_noresidual': 91.4}
    runs = []
    for seed in range(3):
        for name, value in top1.items():
            arm = warm_start.ARMS.get(name)
            value += 0.1 * seed
            epochs = 15 if arm is None else 20 if arm.source is None else 5
            run = {'config': name, 'role': 'source' if arm is None else 'arm', 'seed': seed,
                   'model': name if arm is None else arm.model, 'model_kwargs': {} if arm is None else arm.kwargs,
                   'test_top1': value, 'test_loss': 0.3, 'best_val_top1': value + 0.5, 'best_epoch': epochs,
                   'schedule': {'lr': 0.01, 'epochs': epochs, 'warmup_epochs': 0},
                   'curve': {'test_top1': [80. + i * (value - 80.) / (epochs - 1) for i in range(epochs)]},
                   'source': None, 'start': None, 'conversion': None}
            if arm is not None and arm.source is not None:
                start = top1[arm.source] + 0.1 * seed
                run.update(source={'config': arm.source, 'seed': seed}, start={'test_top1': start})
                if arm.convert:
                    run['conversion'] = {
                        'test_images': 10000, 'source_test_top1': start, 'source_test_loss': 0.3,
                        'converted_test_top1': start, 'converted_test_loss': 0.3, 'max_abs_logit_diff': 2e-6,
                        'max_abs_logit': 8., 'predictions_differ': conversion_differs if seed == 1 else 0}
            runs.append(run)
    return {
        'protocol': {'quick': False, 'sources': {'epochs': 15, 'lr': 0.1}, 'source_configs': ['resnet18', 'seresnet18'],
                     'finetune': {'epochs': 5, 'lr': 0.01}, 'scratch_epochs': 20,
                     'exactness_check': 'before fine-tuning, the check'},
        'versions': {'torch': '2.14.1', 'timm': '1.0.31'}, 'hardware': ['test machine'],
        'commands': ['python benchmarks/warm_start.py'], 'wall_time_s': 60.,
        'invocations': [{'workers': 1, 'device': 'cuda'}],
        'runs': runs, 'missing': [],
    }


def test_report_table_comparisons_exactness_and_verdict(tmp_path):
    path = tmp_path / 'warm_start.json'
    path.write_text(json.dumps(fabricated_results()))
    doc = tmp_path / 'doc.md'
    doc.write_text('intro\n<!-- begin warm-start: generated by x -->\nold\n<!-- end warm-start -->\nrest\n')
    md, png = warm_start_report.main(['--results', str(path), '--out-dir', str(tmp_path / 'out'), '--doc', str(doc)])
    text = md.read_text()
    table = text.split('## The conversions at epoch 0')[0]
    rows = {line.split(' | ')[0].lstrip('| '): line for line in table.splitlines() if line.startswith('| ')}
    assert set(warm_start_report.ORDER) <= set(rows)
    assert '| 92.40 ± 0.10 | +0.50 [' in rows['resnet18_to_saeresnet18']
    assert '| resnet18 converted | saeresnet18 |' in rows['resnet18_to_saeresnet18']
    assert '| 91.50 ± 0.10 | +0.00 [' in rows['seresnet18_to_saeresnet18_noresidual']
    assert '| scratch | saeresnet18 | - | 20 | 3 | 91.90 ± 0.10 | - |' in rows['saeresnet18_scratch']
    assert 'resnet18_to_saeresnet18 vs resnet18_continued: +0.50 points' in text
    assert 'each of the 6 converted models predicts the same class as its source on every one of the 10000' in text
    assert 'evaluated as every epoch is (bf16 autocast on the GPU, so a converted model' in text
    verdict = next(line for line in text.splitlines() if line.startswith('**Verdict**'))
    assert verdict.startswith('**Verdict** (5 further epochs, 3 seeds): resnet18 converted to saeresnet18 and '
                              'fine-tuned vs resnet18 trained on: higher (+0.50 points, 95% CI [')
    assert 'seresnet18 trained on: no detectable difference (+0.00 points' in verdict
    assert 'vs saeresnet18 from scratch: higher (+0.50 points' in verdict
    section = doc.read_text()
    assert section.startswith(f'intro\n<!-- begin warm-start: generated by x -->\nFrom `{path}` (21 runs')
    assert verdict in section and '](out/warm_start.png)' in section and section.endswith('rest\n')
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_report_flags_an_inexact_conversion(tmp_path):
    path = tmp_path / 'warm_start.json'
    path.write_text(json.dumps(fabricated_results(conversion_differs=3)))
    md, _ = warm_start_report.main(['--results', str(path), '--out-dir', str(tmp_path)])
    assert '**Epoch 0: NOT exact.** 2 of 6 converted models predict differently' in md.read_text()


@pytest.mark.slow
def test_report_of_the_quick_study(study, tmp_path):
    md, png = warm_start_report.main(['--results', str(study[1]), '--out-dir', str(tmp_path)])
    text = md.read_text()
    assert 'Quick smoke protocol: not a result' in text and 'each of the 2 converted models' in text
    assert 'too few seeds for an interval' in text and png.stat().st_size > 0


def test_committed_report_and_doc_section_are_generated_from_the_committed_results():
    """results/warm_start.md and docs/results.md's warm-start section are what the report writes from the JSON."""
    json_path = common.RESULTS_DIR / 'warm_start.json'
    results = json.loads(json_path.read_text())
    assert results['missing'] == [] and len(results['runs']) == 21
    assert (common.RESULTS_DIR / 'warm_start.md').read_text() == warm_start_report.markdown(results, json_path.name)
    assert common.doc_section(common.REPO_ROOT / 'docs' / 'results.md', 'warm-start') == warm_start_report.doc_summary(
        results, 'benchmarks/results/warm_start.json', '../benchmarks/results/warm_start.png')
