"""Test-wide setup.

There is no GPU on CI: Triton kernels run in the CPU interpreter. The flag must be set before any
module decorates a kernel with ``@triton.jit``, hence here, at the top of the test session.
"""
import os

import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Tiny shapes run faster on one thread, and results do not depend on the machine's core count.
torch.set_num_threads(1)
