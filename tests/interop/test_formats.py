"""Every format both ways: ``recurlm-convert import`` of a checkpoint saved by its own library gives
the same logits (max relative difference <= 1e-4, float32); ``export-hf`` of the import loads with
the target library's own loader in a fresh process and gives them again; import -> export-hf ->
import gives bitwise-identical weights; greedy decoding equals the source library's."""
import torch
from safetensors.torch import load_file

from recurlm.eval.generate import SamplingConfig, generate
from recurlm.models.pretrained import load_pretrained
from recurlm.train.convert import main as convert

TOLERANCE = 1e-4


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def _ids(seq_len, seed=3):
    return torch.randint(0, 101, (2, seq_len), generator=torch.Generator().manual_seed(seed))


def test_import_export_round_trip(source, fresh_load, tmp_path):
    built = source.build(tmp_path)
    ids = _ids(source.seq_len)
    with torch.no_grad():
        reference = built.logits(ids)

    assert convert(["import", str(built.path), "--out", str(tmp_path / "imported")]) == 0
    model = load_pretrained(str(tmp_path / "imported"))
    with torch.no_grad():
        ours, _ = model(ids)
    assert relative_error(ours, reference) <= TOLERANCE, "imported model differs from the source"

    assert convert(["export-hf", str(tmp_path / "imported"), "--out", str(tmp_path / "exported"),
                    "--format", source.format]) == 0
    theirs = fresh_load(source.loader, tmp_path / "exported", ids, tmp_path)
    assert relative_error(theirs, reference) <= TOLERANCE, "the exported directory differs from the source"

    assert convert(["import", str(tmp_path / "exported"), "--out", str(tmp_path / "again")]) == 0
    first = load_file(tmp_path / "imported" / "model.safetensors")
    second = load_file(tmp_path / "again" / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert (tmp_path / "imported" / "config.json").read_text() == (tmp_path / "again" / "config.json").read_text()


def test_greedy_decoding_equals_the_source_library(decoding_source, tmp_path):
    built = decoding_source.build(tmp_path)
    assert built.greedy is not None
    assert convert(["import", str(built.path), "--out", str(tmp_path / "imported")]) == 0
    model = load_pretrained(str(tmp_path / "imported"))
    prompt = _ids(8, seed=5)[0].tolist()  # 8: a multiple of the xLSTM chunk size its prefill needs
    ours = generate(model, [prompt], SamplingConfig(max_new_tokens=20, temperature=0.0))[0].tokens
    assert ours == built.greedy(prompt, 20)
