"""Shared fixtures of the evaluation tests: a synthetic MQAR corpus with a 320-piece tokenizer
(built once per session), tiny random models, an export directory, and one tiny trained run."""
import os

import pytest
import torch

from recurlm.data import DataConfig, SourceConfig, TokenizerConfig, prepare
from recurlm.models import build_model
from recurlm.models.pretrained import save_pretrained

# Tiny shapes: one intra-op thread is many times faster than two on the shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("eval-data-cache"))


@pytest.fixture(scope="session")
def synthetic_data(data_cache):
    cfg = DataConfig(sources=[SourceConfig(name="mqar", kind="synthetic",
                                           synthetic={"task": "mqar", "num_docs": 300, "num_pairs": [4, 8]})],
                     tokenizer=TokenizerConfig(vocab_size=320, input_sentence_size=0),
                     valid_fraction=0.05, num_workers=1, cache_dir=data_cache)
    return prepare(cfg, progress=False)


@pytest.fixture(scope="session")
def tokenizer(synthetic_data):
    return synthetic_data.tokenizer


@pytest.fixture
def make_model(tokenizer):
    def make(family="hgrn2", seed=0):
        torch.manual_seed(seed)
        return build_model({"family": family, "size": "tiny", "vocab_size": tokenizer.vocab_size}).eval()

    return make


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    model = build_model({"family": "hgrn2", "size": "tiny", "vocab_size": tokenizer.vocab_size})
    out = str(tmp_path_factory.mktemp("export"))
    return save_pretrained(out, model.config, model.state_dict(), tokenizer.path, {"step": 7})


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_cache):
    """recurlm-train's trainer in-process on data=synthetic/mqar: 3 steps of a tiny HGRN2."""
    from recurlm.configs import compose
    from recurlm.train.trainer import train

    run_dir = str(tmp_path_factory.mktemp("run"))
    job = compose(["data=synthetic/mqar", "data.sources.0.synthetic.num_docs=300", f"data.cache_dir={data_cache}",
                   "data.valid_fraction=0.05", "model.size=tiny", "train.seq_len=32", "train.global_batch_size=4",
                   "train.steps=3", "train.eval_batches=1", "logger.progress=false", f"run_dir={run_dir}"])
    result = train(job)
    assert os.path.isdir(os.path.join(result.run_dir, "checkpoints", "3"))
    return result
