"""Tables of the speed measurements written by benchmarks/speed.py, and the speed sections of docs/speed.md.

    python benchmarks/speed_report.py benchmarks/results/speed_cpu.json --doc docs/speed.md
    python benchmarks/speed_report.py benchmarks/results/speed_cuda.json \
        benchmarks/results/speed_cuda_resnext50_train.json --doc docs/speed.md

Writes the markdown table beside each JSON (``speed_<device>.md``, generated from the JSON alone) and, with
--doc, the doc's section of their device (``speed`` for the CPU, ``speed-cuda`` for a GPU): one summary per
JSON, in the order given, each naming its JSON relative to the repository root.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

if __package__ in (None, ''):  # run as a file (python benchmarks/speed_report.py): import the package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.common import repo_name, update_doc_section


def compile_flags(record: dict) -> str:
    """What makes a compiled row suspect: graph breaks, compilations during the timed rounds."""
    flags = []
    if record['graphs'] != 1:
        flags.append(f"{record['graphs']} graphs")
    if record['late_compiles']:
        flags.append(f"RECOMPILED {record['late_compiles']}x in warm-up or timed rounds: timing invalid")
    return ''.join(f', {flag}' for flag in flags)



def _ratio_cell(ratio: Optional[dict]) -> str:
    if ratio is None:
        return '1 (ref)'
    return f"{ratio['median']:.3f} [{ratio['q1']:.2f}, {ratio['q3']:.2f}]"


def _compile_cell(model: dict) -> str:
    """Compile time in seconds, with its flags; '-' for an eager row."""
    record = model.get('compile')
    return '-' if record is None else f"{record['compile_s']:.1f}{compile_flags(record)}"


def markdown(report: dict) -> str:
    """The markdown tables of a report (generated from the JSON alone)."""
    st, hw, ver = report['settings'], report['hardware'], report['versions']
    gpu = f", GPU {hw['gpu']} (CUDA {hw['cuda']})" if 'gpu' in hw else ''
    lines = [
        f"# SaE vs SE vs ResNet: speed on {st['device']}",
        '',
        *([] if report['complete'] else [
            f"**Incomplete: {len(report['results'])} of {len(report['planned'])} modes ran.**", '']),
        f"`{report['command']}`",
        '',
        f"CPU {hw['cpu']} ({hw['cpu_cores']} cores, {hw['torch_threads']} torch threads){gpu}; "
        f"load average at start {', '.join(f'{v:.2f}' for v in hw['load_average_at_start'])}. "
        f"python {ver['python']}, torch {ver['torch']}, timm {ver['timm']}, timm_sae {ver['timm_sae']}.",
        '',
        f"{st['precision']}, {st['img_size']} px, inference batch {st['batch_size']}, training batch "
        f"{st['train_batch_size']}; {st['rounds']} rounds after {st['warmup']} warm-up; {st['timing']}. "
        f"Training step: {st['train_step']}.",
        '',
        'Ratios are throughput ratios (> 1: faster than the reference; memory: < 1 uses less), the median '
        'over rounds of t_ref / t_model, with the quartiles of the per-round ratios in brackets. '
        f"Peak memory: {st['memory']}.",
        '',
        *([f"Compiled modes: {st['compile']}.", ''] if 'compile' in st else []),
        '| model | params (M) | GMACs |',
        '|---|---:|---:|',
        *[f"| {name} | {m['params_m']:.2f} | {m['gmacs']:.2f} |" for name, m in report['models'].items()],
    ]
    for pair in dict.fromkeys(r['pair'] for r in report['results']):
        results = [r for r in report['results'] if r['pair'] == pair]
        refs = results[0]['references']
        lines += ['', f'## {pair}', '']
        if results[0]['note']:
            lines += [results[0]['note'], '']
        with_compile = any('compile' in m for r in results for m in r['models'])
        with_kept = any(m.get('kept_activation_mib') is not None for r in results for m in r['models'])
        lines += [
            '| mode | backend | batch | model | img/s | ' + ' | '.join(f'vs {r}' for r in refs)
            + ' | peak MiB | ' + ' | '.join(f'memory vs {r}' for r in refs) + ' |'
            + (' kept MiB | ' + ' | '.join(f'kept vs {r}' for r in refs) + ' |' if with_kept else '')
            + (' compile s |' if with_compile else ''),
            '|---|---|---:|---|---:|' + '---:|' * len(refs) + '---:|' + '---:|' * len(refs)
            + ('---:|' * (1 + len(refs)) if with_kept else '') + ('---:|' if with_compile else ''),
        ]
        for r in results:
            for m in r['models']:
                mem, kept = m['peak_memory_mib'], m.get('kept_activation_mib')
                cells = [
                    r['mode'], r['backend'], str(r['batch_size']), m['label'], f"{m['images_per_s']:.1f}",
                    *[_ratio_cell(m['throughput_ratio'].get(ref)) for ref in refs],
                    '-' if mem is None else f'{mem:.0f}',
                    *['-' if mem is None else f"{m['memory_ratio'].get(ref, 1.):.3f}" for ref in refs],
                    *(['-' if kept is None else f'{kept:.1f}']
                      + ['-' if kept is None else f"{m['kept_ratio'].get(ref, 1.):.3f}" for ref in refs]
                      if with_kept else []),
                    *([_compile_cell(m)] if with_compile else []),
                ]
                lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def doc_summary(report: dict, source: str) -> str:
    """A report's part of the doc's section: the SaE model of each pair against its references, per mode."""
    st, hw, ver = report['settings'], report['hardware'], report['versions']
    device = f"GPU {hw['gpu']}" if 'gpu' in hw else f"CPU {hw['cpu']}, {hw['torch_threads']} torch threads"
    with_compile = any('compile' in m for r in report['results'] for m in r['models'])
    with_kept = any(m.get('kept_activation_mib') is not None for r in report['results'] for m in r['models'])
    lines = [
        f"From `{source}` ({'complete' if report['complete'] else 'INCOMPLETE'}): {device}; torch {ver['torch']}, "
        f"timm {ver['timm']}; {st['precision']}, {st['img_size']} px, inference batch {st['batch_size']}, "
        f"training batch {st['train_batch_size']}, {st['rounds']} interleaved rounds; `{report['command']}`. "
        'Throughput ratio of the first model of each row to the reference (> 1: faster), median over rounds '
        '[quartiles]; memory: ratio of peak memory (< 1: less)'
        + ('; kept: ratio of the activation memory a training forward keeps for the backward (eager, '
           'independent of the machine)' if with_kept else '') + '.'
        + (' Compiled rows: steady state after compilation; compile s: compile time of the model, then of the '
           'reference (each with a fresh Inductor cache).' if with_compile else ''),
        '',
        '| model | reference | mode | backend | throughput ratio | memory ratio |'
        + (' kept ratio |' if with_kept else '') + (' compile s |' if with_compile else ''),
        '|---|---|---|---|---:|---:|' + ('---:|' if with_kept else '') + ('---:|' if with_compile else ''),
    ]
    for r in report['results']:
        first = r['models'][0]
        by_label = {m['label']: m for m in r['models']}
        for ref, ratio in first['throughput_ratio'].items():
            memory = first['memory_ratio'].get(ref)
            compile_cell = (
                f" {_compile_cell(first)} / {_compile_cell(by_label[ref])} |" if 'compile' in first
                else ' - |' if with_compile else '')
            kept = first.get('kept_ratio', {}).get(ref)
            kept_cell = (' - |' if kept is None else f' {kept:.3f} |') if with_kept else ''
            lines.append(
                f"| {first['label']} | {ref} | {r['mode']} | {r['backend']} | {_ratio_cell(ratio)} | "
                f"{'-' if memory is None else f'{memory:.3f}'} |{kept_cell}{compile_cell}")
    return '\n'.join(lines) + '\n'


def section_name(report: dict) -> str:
    """The doc section of a report's device: ``speed`` for the CPU, ``speed-cuda`` for the GPU."""
    device = report['settings']['device'].split(':')[0]
    return 'speed' if device == 'cpu' else f'speed-{device}'


def write_tables(json_paths: Sequence[Path], doc: Optional[Path] = None) -> List[Path]:
    """(Re)generate the markdown table next to each report JSON, and, when given, the doc's section of their
    device: one summary per report, in the order given (all of one device)."""
    reports = [json.loads(path.read_text()) for path in json_paths]
    for path, report in zip(json_paths, reports, strict=True):
        path.with_suffix('.md').write_text(markdown(report))
    if doc:
        sections = {section_name(report) for report in reports}
        if len(sections) != 1:
            raise SystemExit(f'--doc takes reports of one device; these go to the sections {sorted(sections)}')
        summaries = [doc_summary(report, repo_name(path)) for path, report in zip(json_paths, reports, strict=True)]
        update_doc_section(doc, sections.pop(), '\n'.join(summaries), 'benchmarks/speed_report.py')
    return [path.with_suffix('.md') for path in json_paths]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('reports', type=Path, nargs='+', metavar='JSON', help='speed.py results, all of one device')
    parser.add_argument('--doc', type=Path,
                        help='also rewrite the section of this doc for the device: "speed" (CPU), "speed-cuda"')
    args = parser.parse_args(argv)
    print('wrote ' + ', '.join(map(str, write_tables(args.reports, args.doc))))
    return 0


if __name__ == '__main__':
    sys.exit(main())
