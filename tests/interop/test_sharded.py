"""Sharded checkpoints (``model.safetensors.index.json``): import reads them tensor by tensor,
export-hf streams each tensor into shards no larger than ``--max-shard-size`` (one tensor above it
gets a shard of its own), and transformers loads the result."""
import json

import torch
from safetensors.torch import load_file

from recurlm.models.convert import io
from recurlm.train.convert import main as convert


def _hf_model():
    import transformers

    torch.manual_seed(0)
    config = transformers.RecurrentGemmaConfig(num_hidden_layers=3, vocab_size=101, hidden_size=48, intermediate_size=104,
                                               num_attention_heads=4, num_key_value_heads=1, lru_width=44,
                                               attention_window_size=6, tie_word_embeddings=False)
    return transformers.RecurrentGemmaForCausalLM(config).eval()


def test_sharded_source_and_sharded_export(tmp_path, monkeypatch):
    import transformers

    model = _hf_model()
    model.save_pretrained(tmp_path / "whole")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    index = json.loads((tmp_path / "sharded" / io.INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 3

    reads = []
    original_get = io.WeightReader.get
    monkeypatch.setattr(io.WeightReader, "get", lambda self, key: reads.append(key) or original_get(self, key))
    assert convert(["import", str(tmp_path / "sharded"), "--out", str(tmp_path / "a")]) == 0
    assert len(reads) == len(set(reads)) == len(index["weight_map"])  # each tensor read once, on demand
    assert convert(["import", str(tmp_path / "whole"), "--out", str(tmp_path / "b")]) == 0
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # export-hf streams: each tensor's bytes go to its shard file as it is converted
    written = []
    original_write = io.SafetensorsStream.write

    def write(self, key, tensor):
        before = self._file.tell()
        original_write(self, key, tensor)
        written.append(self._file.tell() - before == 4 * tensor.numel())

    monkeypatch.setattr(io.SafetensorsStream, "write", write)
    limit = 30_000
    assert convert(["export-hf", str(tmp_path / "a"), "--out", str(tmp_path / "exported"),
                    "--max-shard-size", f"{limit}B"]) == 0
    out_index = json.loads((tmp_path / "exported" / io.INDEX).read_text())
    shards = sorted(set(out_index["weight_map"].values()))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    for shard in shards:
        tensors = load_file(tmp_path / "exported" / shard)
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        assert size <= limit or len(tensors) == 1
    assert len(written) == len(out_index["weight_map"]) and all(written)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    ids = torch.randint(0, 101, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, use_cache=False).logits, model(ids, use_cache=False).logits,
                                   rtol=0, atol=0)
