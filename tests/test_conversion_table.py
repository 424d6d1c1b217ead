"""benchmarks/conversion_table.py: the conversion tags' tables, and the timm data they cite."""
import pytest
import timm

from benchmarks import conversion_table
from benchmarks.common import REPO_ROOT


def test_cited_rows_are_sources_of_registered_tags():
    """The data file holds timm's rows of our sources only, once each, with timm's columns."""
    rows = conversion_table.timm_top1()
    sources = {timm.models.get_pretrained_cfg(n).hf_hub_id.split('/', 1)[1] for n in timm.list_pretrained('sae*')}
    assert rows.keys() <= sources and len(rows) == 92
    for row in rows.values():
        assert 0 < float(row['top1']) < 100 and float(row['top1']) + float(row['top1_err']) == pytest.approx(100)


def test_tables():
    rows = conversion_table.timm_top1()
    every, defaults = conversion_table.table(rows), conversion_table.table(rows, defaults_only=True)
    assert len(every) - 2 == len(timm.list_pretrained('sae*')) and len(defaults) - 2 == 20
    line = next(line for line in defaults if line.startswith('| `saeresnet50.'))
    assert line.startswith('| `saeresnet50.resnet50_a1_in1k` (default) | [`resnet50.a1_in1k`]')
    assert f"| x * (1 + s) | apache-2.0 | 224 / 288 | {float(rows['resnet50.a1_in1k']['top1']):.2f} | 288 |" in line
    missing = next(line for line in every if line.startswith('| `saeresnet50.resnet50_bamboo`'))
    assert missing.endswith('| - | - |')
    se = next(line for line in defaults if line.startswith('| `saeresnextaa101d_32x8d.'))
    assert se.startswith('| `saeresnextaa101d_32x8d.seresnextaa101d_32x8d_sw_in12k_ft_in1k_288` (default) | '
                         '[`seresnextaa101d_32x8d.sw_in12k_ft_in1k_288`]')
    top1 = float(rows['seresnextaa101d_32x8d.sw_in12k_ft_in1k_288']['top1'])
    assert f'| x * s (SE source) | apache-2.0 | 288 / 320 | {top1:.2f} | 320 |' in se
    assert sum('| x * s (SE source) |' in line for line in every) == 19
    assert '| cc-by-nc-4.0 (non-commercial) |' in next(line for line in defaults if '`saeresnext101_32x4d.' in line)


def test_doc_section_is_fresh(tmp_path):
    doc = REPO_ROOT / 'docs' / 'pretrained.md'
    copy = tmp_path / 'pretrained.md'
    copy.write_text(doc.read_text())
    conversion_table.main(['--doc', str(copy), '--out', str(tmp_path / 'conversion_tags.md')])
    assert copy.read_text() == doc.read_text(), 'run: python benchmarks/conversion_table.py --doc docs/pretrained.md'
    assert (tmp_path / 'conversion_tags.md').read_text() == conversion_table.ALL_TAGS.read_text()
