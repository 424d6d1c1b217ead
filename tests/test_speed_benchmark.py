"""benchmarks/speed.py and profile_speed.py at tiny settings: report structure, ratios from per-round
times, compile time and recompilation counts of torch.compile modes; speed_report.py's tables and doc
sections from the JSON.

The compiled modes use torch.compile's ``aot_eager`` backend: the same TorchDynamo capture and AOT
autograd as Inductor, without code generation, which takes minutes per model on 2 CPU cores.
"""
import json
import re
import shlex
import statistics

import pytest
import torch

from benchmarks import (
    common,
    inductor_block,
    profile_speed,
    speed,
    speed_report,
    tail_affine,
    tail_reductions,
    tail_speed,
)
from benchmarks.speed_pairs import PAIRS
from timm_sae import SqueezeAggregatedExcitation, tail
from timm_sae._testing import relative_error

QUICK_COMPILE = ['--quick', '--compile', '--compile-backend', 'aot_eager']


# The quick measurement (eager, aot_eager compilation and memory probes in subprocesses) takes a minute or
# more on 2 busy cores: its tests are marked slow; the tables and doc sections are checked on the committed
# JSONs by default.
@pytest.fixture(scope='module')
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp('speed') / 'speed_cpu.json'
    argv = [*QUICK_COMPILE, '--out', str(out)]
    assert speed.main(argv) == 0
    return out, argv


@pytest.mark.slow
def test_report_structure(quick_report):
    out, argv = quick_report
    report = json.loads(out.read_text())
    assert report['complete']
    assert report['planned'] == ['resnet18 infer-nchw eager', 'resnet18 infer-nchw compile (aot_eager)']
    assert shlex.split(report['command']) == ['python', 'benchmarks/speed.py', *argv]
    assert set(report['versions']) == {'python', 'torch', 'timm', 'timm_sae'}
    assert {'cpu', 'cpu_cores', 'torch_threads'} <= set(report['hardware'])
    settings = report['settings']
    assert (settings['device'], settings['precision'], settings['rounds']) == ('cpu', 'fp32', 2)
    assert "backend='aot_eager'" in settings['compile']
    assert set(report['models']) == {'saeresnet18', 'seresnet18', 'resnet18'}  # the timm-tail entry is saeresnet18
    assert all(m['params_m'] > 11 and m['gmacs'] > 0 for m in report['models'].values())

    eager, compiled = report['results']
    for result, backend in ((eager, 'eager'), (compiled, 'compile (aot_eager)')):
        assert (result['pair'], result['mode'], result['backend']) == ('resnet18', 'infer-nchw', backend)
        assert result['references'] == ['saeresnet18 (timm tail)', 'seresnet18', 'resnet18']
        times = {m['label']: m['round_times_s'] for m in result['models']}
        assert list(times) == ['saeresnet18', 'saeresnet18 (timm tail)', 'seresnet18', 'resnet18']
        for m in result['models']:
            assert len(m['round_times_s']) == settings['rounds']
            assert m['images_per_s'] == pytest.approx(result['batch_size'] / statistics.median(m['round_times_s']))
            for ref, ratio in m['throughput_ratio'].items():
                per_round = [r / t for r, t in zip(times[ref], m['round_times_s'], strict=True)]
                assert ratio['median'] == pytest.approx(statistics.median(per_round))
                assert min(per_round) <= ratio['q1'] <= ratio['median'] <= ratio['q3'] <= max(per_round)
        sae = result['models'][0]
        assert set(sae['throughput_ratio']) == {'saeresnet18 (timm tail)', 'seresnet18', 'resnet18'}
        assert 'seresnet18' not in result['models'][2]['throughput_ratio']

    for m in eager['models']:
        assert m['peak_memory_mib'] > 0 and 'compile' not in m
    assert set(eager['models'][0]['memory_ratio']) == {'saeresnet18 (timm tail)', 'seresnet18', 'resnet18'}
    assert all(m['kept_activation_mib'] is None for m in eager['models'])  # kept memory: training modes only
    for m in compiled['models']:
        # no memory for compiled models on the CPU (a subprocess would compile again)
        assert m['peak_memory_mib'] is None and m['memory_ratio'] == {}
        record = m['compile']
        # one graph (no graph break), compiled by the first call, nothing compiled while timing
        assert (record['graphs'], record['compile_calls'], record['late_compiles']) == (1, 1, 0)
        assert record['compile_s'] == pytest.approx(record['compile_calls_s'] - m['median_s'])
        assert record['compile_s'] > 0


@pytest.mark.slow
def test_tables_regenerated_from_json(quick_report, tmp_path):
    out, _ = quick_report
    md_path = out.with_suffix('.md')
    md = md_path.read_text()
    compile_s = {m['label']: m['compile']['compile_s'] for m in json.loads(out.read_text())['results'][1]['models']}
    assert '| infer-nchw | eager | 2 | saeresnet18 |' in md
    assert "| infer-nchw | compile (aot_eager) | 2 | resnet18 |" in md
    assert md.count(' compile s |') == 1 and f"| - | - | - | {compile_s['resnet18']:.1f} |" in md
    assert 'Compiled modes: torch.compile(' in md
    md_path.unlink()
    assert speed_report.main([str(out)]) == 0
    assert md_path.read_text() == md

    doc = tmp_path / 'speed.md'
    doc.write_text(
        '# x\n\n<!-- begin speed: generated by benchmarks/speed_report.py -->\nold\n<!-- end speed -->\ntail\n')
    assert speed_report.main([str(out), '--doc', str(doc)]) == 0
    section = doc.read_text()
    assert '\nold\n' not in section and section.endswith('<!-- end speed -->\ntail\n')
    assert section.count(f'From `{out}` (complete)') == 1
    assert '| saeresnet18 | seresnet18 | infer-nchw | eager |' in section
    assert ("| saeresnet18 | resnet18 | infer-nchw | compile (aot_eager) |" in section
            and f"| {compile_s['saeresnet18']:.1f} / {compile_s['resnet18']:.1f} |" in section)
    assert 'Incomplete' not in md and 'RECOMPILED' not in md


def test_committed_results_table_is_generated_from_its_json():
    """speed_report.py reproduces the committed tables (an eager-only report has no compile column)."""
    reports = sorted(common.RESULTS_DIR.glob('speed_*.json'))
    assert len(reports) >= 3
    for json_path in reports:
        assert speed_report.markdown(json.loads(json_path.read_text())) == json_path.with_suffix('.md').read_text()


def test_committed_block_tables_are_generated_from_their_json():
    """inductor_block.py's committed tables (kernels, traffic, times of one compiled block) match their JSON."""
    reports = sorted(common.RESULTS_DIR.glob('inductor_block_*.json'))
    assert reports
    for json_path in reports:
        report = json.loads(json_path.read_text())
        assert 'resnet50' in report['results'] and set(report['results']) <= set(inductor_block.MODELS)
        assert inductor_block.markdown(report) == json_path.with_suffix('.md').read_text()


def test_committed_tail_reductions_match_the_tail(tmp_path):
    """tail_reductions.py's committed table is its JSON's, measured with the threshold the tail has now; a run
    writes one row a shape with the form the tail picks."""
    json_path = common.RESULTS_DIR / 'tail_reductions_cpu.json'
    report = json.loads(json_path.read_text())
    assert tail_reductions.markdown(report) == json_path.with_suffix('.md').read_text()
    assert report['settings']['threshold_bytes'] == tail.PER_SAMPLE_KERNELS_FROM_BYTES
    out = tmp_path / 'reductions.json'
    assert tail_reductions.main(['--rounds', '1', '--calls', '1', '--batch-size', '2', '--out', str(out)]) == 0
    rows = json.loads(out.read_text())['results']
    assert len(rows) == len(report['results']) == sum(map(len, tail_reductions.SHAPES.values()))
    for row in rows + report['results']:
        large = row['sample_bytes'] >= tail.PER_SAMPLE_KERNELS_FROM_BYTES
        assert row['picked'] == ('per-sample kernels' if large else 'whole tensors')
    assert {row['picked'] for row in rows} == {'per-sample kernels', 'whole tensors'}
    assert all(row['per-sample kernels_ms'] > 0 and row['whole tensors_ms'] > 0 for row in rows)


@pytest.mark.parametrize('section', ['speed', 'speed-cuda'])
def test_doc_speed_section_is_generated_from_its_json(section):
    """Each speed section of docs/speed.md (CPU, GPU) is what ``--doc`` writes from the JSONs it names."""
    body = common.doc_section(common.REPO_ROOT / 'docs' / 'speed.md', section)
    assert body, f'docs/speed.md has no generated {section} section'
    sources = re.findall(r'^From `([^`]+)`', body, re.MULTILINE)
    reports = [json.loads((common.REPO_ROOT / source).read_text()) for source in sources]
    assert sources and {speed_report.section_name(report) for report in reports} == {section}
    assert body == '\n'.join(speed_report.doc_summary(r, s) for r, s in zip(reports, sources, strict=True))


def test_table_flags_a_cut_run_and_a_recompiled_row(tmp_path):
    """The table is the JSON's: an edited figure shows, a cut run and a recompiled row are flagged."""
    report = json.loads((common.RESULTS_DIR / 'speed_cuda_resnext50_train.json').read_text())
    table = speed_report.markdown(report)
    assert '| compile (inductor) |' in table and 'Incomplete' not in table and 'RECOMPILED' not in table
    report['results'][0]['models'][0]['images_per_s'] = 12345.6
    compiled = next(m for r in report['results'] for m in r['models'] if 'compile' in m)
    compiled['compile'].update(late_compiles=2, graphs=3)
    report['planned'] += ['resnext50 infer-cl eager']
    report['complete'] = False
    edited = tmp_path / 'edited.json'
    edited.write_text(json.dumps(report))
    assert speed_report.main([str(edited)]) == 0
    table = edited.with_suffix('.md').read_text()
    assert '| 12345.6 |' in table
    assert f"**Incomplete: {len(report['results'])} of {len(report['planned'])} modes ran.**" in table
    assert ', 3 graphs, RECOMPILED 2x in warm-up or timed rounds: timing invalid |' in table


def test_doc_section_takes_several_reports_of_one_device(tmp_path):
    cpu = tmp_path / 'a.json'
    cpu.write_text((common.RESULTS_DIR / 'speed_cpu.json').read_text())
    gpu = tmp_path / 'b.json'
    gpu.write_text((common.RESULTS_DIR / 'speed_cuda.json').read_text())
    doc = tmp_path / 'speed.md'
    doc.write_text('x\n<!-- begin speed: generated by s -->\nold\n<!-- end speed -->\n')
    with pytest.raises(SystemExit, match='one device'):
        speed_report.main([str(cpu), str(gpu), '--doc', str(doc)])
    assert 'old' in doc.read_text()
    assert speed_report.main([str(cpu), str(cpu), '--doc', str(doc)]) == 0
    assert doc.read_text().count(f'From `{cpu}` (') == 2  # the committed report, complete or cut


def test_late_compiles_are_counted():
    torch._dynamo.reset()
    double = torch.compile(lambda x: x * 2, backend='eager', dynamic=False)
    inputs = [torch.ones(2)]
    record = {}
    step = speed._counting_late_compiles(lambda: double(inputs[0]), record)
    step()
    assert record['late_compiles'] == 1  # the first call compiles
    step()
    assert record['late_compiles'] == 1
    inputs[0] = torch.ones(3)  # a new shape: compiled again
    step()
    assert record['late_compiles'] == 2


def test_compile_model_stops_a_model_that_keeps_compiling(monkeypatch):
    events = iter(range(100))
    monkeypatch.setattr(speed, 'build_step', lambda s: lambda: None)
    monkeypatch.setattr(speed, 'compile_events', lambda: next(events))
    setting = speed.Setting(
        'resnet18', False, False, False, False, 'infer', False, 'aot_eager', 2, 32, 'cpu', 'fp32', 1)
    with pytest.raises(RuntimeError, match=f'still compiles after {speed.MAX_COMPILE_CALLS} calls'):
        speed.compile_model(setting)


@pytest.mark.slow
def test_compiled_training_step(tmp_path):
    """Forward and backward graphs are compiled in the first training step; nothing later."""
    out = tmp_path / 'speed_cpu.json'
    assert speed.main([*QUICK_COMPILE, '--modes', 'train-nchw', '--img-size', '32', '--out', str(out)]) == 0
    compiled = json.loads(out.read_text())['results'][1]
    assert (compiled['task'], compiled['backend']) == ('train', 'compile (aot_eager)')
    for m in compiled['models']:
        assert (m['compile']['graphs'], m['compile']['compile_calls'], m['compile']['late_compiles']) == (1, 1, 0)


def test_profile_table(tmp_path):
    out = tmp_path / 'profile.json'
    argv = ['--pair', 'resnet18', '--mode', 'infer-nchw', '--batch-size', '2', '--img-size', '32',
            '--warmup', '1', '--steps', '2', '--top', '40', '--threads', '1', '--out', str(out)]
    assert profile_speed.main(argv) == 0
    report = json.loads(out.read_text())
    assert shlex.split(report['command']) == ['python', 'benchmarks/profile_speed.py', *argv]
    assert report['settings']['backend'] == 'eager' and report['settings']['time'] == 'CPU'
    assert list(report['models']) == ['saeresnet18', 'saeresnet18 (timm tail)', 'seresnet18', 'resnet18']
    # resnet18 has 20 convolutions; seresnet18 16 more (SE's two 1x1 convolutions in 8 blocks), SaE none
    convolutions = {'saeresnet18': 20, 'saeresnet18 (timm tail)': 20, 'seresnet18': 36, 'resnet18': 20}
    for label, m in report['models'].items():
        top = m['top']
        assert 10 < len(top) <= 40 and m['compile'] is None
        assert [row['self_ms'] for row in top] == sorted((row['self_ms'] for row in top), reverse=True)
        assert sum(row['self_ms'] for row in top) <= m['self_time_ms_per_step'] * (1 + 1e-9)
        assert sum(row['share'] for row in top) <= 1 + 1e-9
        assert 'conv' in top[0]['name']  # convolutions dominate a ResNet on the CPU
        calls = {row['name']: row['calls'] for row in top}
        assert calls['aten::convolution'] == convolutions[label]  # per step
    md = out.with_suffix('.md').read_text()
    assert md == profile_speed.markdown(report)
    assert '| operator | saeresnet18 | saeresnet18 (timm tail) | seresnet18 | resnet18 |' in md
    first = report['models']['saeresnet18']['top'][0]
    assert f"| `{first['name']}` | {first['self_ms']:.2f} ({first['calls']:g}) |" in md


def test_profile_rejects_a_mode_the_pair_lacks():
    with pytest.raises(SystemExit, match='has no train mode'):
        profile_speed.main(['--pair', 'resnet50_bn_folded', '--mode', 'train-cl'])


def test_compiled_only_plans_the_compiled_modes_alone(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(speed, 'run_mode', lambda pair, mode, backend, args: ran.append((pair, mode, backend)) or {})
    monkeypatch.setattr(speed, 'write_tables', lambda paths: paths)
    out = tmp_path / 'speed_cpu.json'
    with pytest.raises(SystemExit, match='name them with --compile'):
        speed.main(['--quick', '--compiled-only', '--out', str(out)])
    assert speed.main(['--quick', '--compile', '--compiled-only', '--out', str(out)]) == 0
    assert ran == [('resnet18', 'infer-nchw', 'inductor')]
    assert json.loads(out.read_text())['planned'] == ['resnet18 infer-nchw compile (inductor)']


def test_committed_tail_affine_matches_its_json(tmp_path):
    """tail_affine.py's committed table is its JSON's; a run writes one row a shape, both forms timed."""
    json_path = common.RESULTS_DIR / 'tail_affine_cpu.json'
    report = json.loads(json_path.read_text())
    assert tail_affine.markdown(report) == json_path.with_suffix('.md').read_text()
    out = tmp_path / 'affine.json'
    assert tail_affine.main(['--rounds', '1', '--calls', '1', '--batch-size', '2', '--out', str(out)]) == 0
    rows = json.loads(out.read_text())['results']
    assert len(rows) == len(report['results']) == sum(map(len, tail_reductions.SHAPES.values()))
    assert all(row['addcmul_ms'] > 0 and row['BatchNorm kernel_ms'] > 0 for row in rows)


def test_tail_affine_times_the_addcmul_form():
    """The 'addcmul' form stands addcmul in for the tail's ``_affine`` inside its block only; the other form is the
    tail as it is."""
    affine = tail._affine
    with tail_affine.FORMS['addcmul']():
        assert tail._affine is tail_affine.addcmul_affine
    with tail_affine.FORMS['BatchNorm kernel']():
        assert tail._affine is affine
    assert tail._affine is affine is not tail_affine.addcmul_affine


def test_triton_pair_needs_cuda():
    """The Triton tail's pair is refused on the CPU with what to do, before anything is built or timed."""
    assert PAIRS['resnet50_triton'].entries[0].label == 'saeresnet50 (Triton tail)'
    with pytest.raises(SystemExit, match='CUDA tensors only: leave it out of --pairs'):
        speed.main(['--device', 'cpu', '--pairs', 'resnet50_triton', '--modes', 'train-cl', '--rounds', '2'])


def test_tail_speed_times_timm_form_against_the_exact_tail(tmp_path):
    """tail_speed.py's reference is timm's form of the same function (float64 values and gradients equal the exact
    tail's); its committed table is its JSON's; a run writes one row a shape and layout."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(3, 16, 5, 6, dtype=torch.float64, generator=generator)
    shortcut = torch.randn(3, 16, 5, 6, dtype=torch.float64, generator=generator)
    gate = tail.gate_of(SqueezeAggregatedExcitation(16, rd_channels=8).double())
    results = []
    for form in (tail_speed.timm_form, tail.gated_tail):
        norm = torch.nn.BatchNorm2d(16).double()
        inputs = [z.clone().requires_grad_(), shortcut.clone().requires_grad_()]
        out = form(inputs[0], norm, gate, inputs[1])
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        results.append([out, inputs[0].grad, inputs[1].grad, norm.running_var])
    for timm_result, exact_result in zip(*results, strict=True):
        assert relative_error(timm_result, exact_result) < 1e-12
    json_paths = sorted(common.RESULTS_DIR.glob('tail_speed_cpu*.json'))
    assert len(json_paths) == 3
    for json_path in json_paths:
        report = json.loads(json_path.read_text())
        assert tail_speed.markdown(report) == json_path.with_suffix('.md').read_text()
    out_path = tmp_path / 'speed.json'
    assert tail_speed.main(['--rounds', '1', '--calls', '1', '--batch-size', '2', '--out', str(out_path)]) == 0
    rows = json.loads(out_path.read_text())['results']
    assert len(rows) == len(report['results']) == 2 * sum(map(len, tail_reductions.SHAPES.values()))
    assert {row['layout'] for row in rows} == set(tail_speed.LAYOUTS)
