"""Size presets against the papers: every paper-size preset of every family is built on the meta device
(no storage, so 14B costs nothing) and its parameter count is checked against the published number in
configs/model_sizes/paper_sizes.yaml (count, vocabulary, tolerance and source listed there)."""
import pytest

from recurlm.configs.summary import main
from recurlm.models.config import preset_table
from recurlm.models.registry import FAMILIES
from recurlm.models.summary import (DEFAULT_VOCAB, build_preset, count_params, format_preset_table, preset_rows,
                                    reference_sizes)

REFERENCES = reference_sizes()
CI_SIZES = ("tiny", "small")
"""Presets without a published counterpart (CI and smoke runs)."""


@pytest.mark.parametrize("family,size", [(f, s) for f in REFERENCES for s in REFERENCES[f]])
def test_paper_preset_matches_published_count(family, size):
    ref = REFERENCES[family][size]
    model = build_preset(family, size, ref["vocab"], ref["overrides"])
    ours = count_params(model, ref["count"])
    assert abs(ours / ref["params"] - 1) <= ref["tolerance"], (
        f"{family}/{size}: {ours:,} {ref['count']} parameters vs {ref['params']:,} ({ref['source']})")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_paper_preset_has_a_reference(family):
    paper_sizes = {str(s) for s in preset_table(family)} - set(CI_SIZES)
    assert paper_sizes == set(REFERENCES.get(family, {})), "configs/model_sizes/paper_sizes.yaml is out of date"
    assert all(ref["source"] and ref["tolerance"] <= 0.2 for ref in REFERENCES.get(family, {}).values())


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_preset_is_under_a_million_parameters(family):
    assert build_preset(family, "tiny", DEFAULT_VOCAB).num_params() < 1_000_000


def test_count_kinds_split_embedding_and_head():
    model = build_preset("hgrn2", "tiny", 100)  # untied head
    embedding = head = 100 * model.config.d_model
    assert count_params(model, "total") == model.num_params()
    assert count_params(model, "non_embedding") == model.num_params() - embedding
    assert count_params(model, "blocks") == model.num_params() - embedding - head
    tied = build_preset("griffin", "tiny", 100)
    assert count_params(tied, "blocks") == count_params(tied, "non_embedding") == tied.num_params() - embedding
    with pytest.raises(ValueError, match="count"):
        count_params(model, "embedding")


def test_preset_table_lists_every_preset_with_its_ratio(capsys):
    rows = preset_rows(["hawk"])
    assert [r["size"] for r in rows] == list(preset_table("hawk"))
    table = format_preset_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| hawk | 7b | 4096 | 32 | 32000 |" in table
    assert main(["--presets", "hawk"]) == 0 and capsys.readouterr().out.strip() == table
    assert main(["--presets", "nope"]) == 2
