"""Test-wide setup.

There is no GPU on CI: Triton kernels run in the CPU interpreter. The flag must be set before any
module decorates a kernel with ``@triton.jit``, hence here, at the top of the test session.

The repository root is the ``recurlm`` package, so its folders (``kernels``, ``data``, ``train``,
...) would shadow PyPI packages of the same name if the root were on ``sys.path``
(``python -m pytest`` puts the working directory there; the README runs ``python -P -m pytest``,
which does not). The root is removed here as well, before any test module imports a third-party
package, so every way of starting pytest imports the installed packages.

The fixtures of the tiny training job (tests/helpers/tiny_job.py) shared by the trainer, recipe and
interop tests live here too: one data cache per session.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]

import pytest  # noqa: E402  (after the sys.path fix above)
import torch  # noqa: E402

from .helpers.tiny_job import TINY_DATA, TINY_TRAIN  # noqa: E402

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# processes the tests start with ``python -m`` must not put the working directory on sys.path either
os.environ.setdefault("PYTHONSAFEPATH", "1")

# Tiny shapes run faster on one thread, and results do not depend on the machine's core count.
torch.set_num_threads(1)


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
    """The tiny job's prepared data, once per session."""
    return str(tmp_path_factory.mktemp("data-cache"))


@pytest.fixture
def tiny_job(data_cache, tmp_path):
    """compose() for a tiny job in tmp_path; extra overrides win."""
    from recurlm.configs import compose  # here, not at the top: kernel-only runs skip loading every config

    def make(*overrides, run_dir=None):
        return compose([*TINY_DATA, f"data.cache_dir={data_cache}", *TINY_TRAIN,
                        f"run_dir={run_dir or os.path.join(str(tmp_path), 'run')}", *overrides])

    return make
