"""Tiny training jobs for the trainer tests: a 300 kB slice of the stdlib corpus, a 512-piece
tokenizer and a tiny HGRN2, all cached under one temporary directory per session."""
import os

import pytest

from recurlm.configs import compose

TINY_DATA = [
    "data.sources.0.max_bytes=300000",
    "data.tokenizer.vocab_size=512",
    "data.tokenizer.input_sentence_size=20000",
    "data.valid_fraction=0.05",
    "data.num_workers=1",
]
TINY_TRAIN = [
    "model.size=tiny",
    "train.seq_len=32",
    "train.global_batch_size=4",
    "train.eval_batches=2",
    "logger.progress=false",
    "logger.log_every=1",
]


@pytest.fixture(scope="session")
def tiny_overrides():
    """The overrides of the tiny job (data and training), without run_dir and cache."""
    return [*TINY_DATA, *TINY_TRAIN]


@pytest.fixture(scope="session")
def subprocess_env():
    """This environment minus the process-group variables an in-process trainer has set, so a
    child process starts its own world (one thread per process, as torchrun does)."""
    dist_vars = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    return {**{k: v for k, v in os.environ.items() if k not in dist_vars}, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


@pytest.fixture
def tiny_job(data_cache, tmp_path):
    """compose() for a tiny job in tmp_path; extra overrides win."""

    def make(*overrides, run_dir=None):
        return compose([*TINY_DATA, f"data.cache_dir={data_cache}", *TINY_TRAIN,
                        f"run_dir={run_dir or os.path.join(str(tmp_path), 'run')}", *overrides])

    return make
