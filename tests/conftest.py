"""Test-wide setup.

There is no GPU on CI: Triton kernels run in the CPU interpreter. The flag must be set before any
module decorates a kernel with ``@triton.jit``, hence here, at the top of the test session.

The repository root is the ``recurlm`` package, so its folders (``kernels``, ``data``, ``train``,
...) would shadow PyPI packages of the same name if the root were on ``sys.path``
(``python -m pytest`` puts the working directory there; the README runs ``python -P -m pytest``,
which does not). The root is removed here as well, before any test module imports a third-party
package, so every way of starting pytest imports the installed packages.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]

import torch  # noqa: E402  (after the sys.path fix above)

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
