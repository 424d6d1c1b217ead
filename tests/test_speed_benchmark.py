"""benchmarks/speed.py --quick: report structure, ratios from per-round times, table from the JSON."""
import importlib.util
import json
import shlex
import statistics
from pathlib import Path

import pytest

SPEED = Path(__file__).resolve().parents[1] / 'benchmarks' / 'speed.py'


@pytest.fixture(scope='module')
def speed():
    spec = importlib.util.spec_from_file_location('speed_benchmark', SPEED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def quick_report(speed, tmp_path_factory):
    out = tmp_path_factory.mktemp('speed') / 'speed_cpu.json'
    argv = ['--quick', '--out', str(out)]
    assert speed.main(argv) == 0
    return out, argv


def test_report_structure(quick_report):
    out, argv = quick_report
    report = json.loads(out.read_text())
    assert report['complete'] and report['planned'] == ['resnet18 infer-nchw eager']
    assert shlex.split(report['command'])[2:] == argv
    assert shlex.split(report['command'])[1].endswith('speed.py')
    assert set(report['versions']) == {'python', 'torch', 'timm', 'timm_sae'}
    assert {'cpu', 'cpu_cores', 'torch_threads'} <= set(report['hardware'])
    settings = report['settings']
    assert (settings['device'], settings['precision'], settings['rounds']) == ('cpu', 'fp32', 2)
    assert set(report['models']) == {'saeresnet18', 'seresnet18', 'resnet18'}
    assert all(m['params_m'] > 11 and m['gmacs'] > 0 for m in report['models'].values())

    (result,) = report['results']
    assert (result['pair'], result['mode'], result['backend']) == ('resnet18', 'infer-nchw', 'eager')
    assert result['references'] == ['seresnet18', 'resnet18']
    times = {m['label']: m['round_times_s'] for m in result['models']}
    assert list(times) == ['saeresnet18', 'seresnet18', 'resnet18']
    for m in result['models']:
        assert len(m['round_times_s']) == settings['rounds']
        assert m['images_per_s'] == pytest.approx(result['batch_size'] / statistics.median(m['round_times_s']))
        assert m['peak_memory_mib'] > 0
        for ref, ratio in m['throughput_ratio'].items():
            per_round = [r / t for r, t in zip(times[ref], m['round_times_s'])]
            assert ratio['median'] == pytest.approx(statistics.median(per_round))
            assert min(per_round) <= ratio['q1'] <= ratio['median'] <= ratio['q3'] <= max(per_round)
    sae = result['models'][0]
    assert set(sae['throughput_ratio']) == set(sae['memory_ratio']) == {'seresnet18', 'resnet18'}
    assert 'seresnet18' not in result['models'][1]['throughput_ratio']


def test_table_regenerated_from_json(speed, quick_report, tmp_path):
    out, _ = quick_report
    md_path = out.with_suffix('.md')
    md = md_path.read_text()
    assert '| infer-nchw | eager | 2 | saeresnet18 |' in md
    md_path.unlink()
    assert speed.main(['--table-only', str(out)]) == 0
    assert md_path.read_text() == md

    report = json.loads(out.read_text())
    report['results'][0]['models'][0]['images_per_s'] = 12345.6
    compiled = json.loads(json.dumps(report['results'][0]))
    compiled['backend'] = 'compile'
    for m in compiled['models']:
        m['peak_memory_mib'], m['memory_ratio'] = None, {}
    report['results'].append(compiled)
    report['planned'] += ['resnet18 infer-nchw compile', 'resnet18 train-nchw eager']
    report['complete'] = False
    edited = tmp_path / 'edited.json'
    edited.write_text(json.dumps(report))
    assert speed.main(['--table-only', str(edited)]) == 0
    table = edited.with_suffix('.md').read_text()
    assert '| 12345.6 |' in table
    assert '| infer-nchw | compile | 2 | resnet18 |' in table
    assert 'Incomplete: 2 of 3 modes ran' in table
    assert 'Incomplete' not in md
