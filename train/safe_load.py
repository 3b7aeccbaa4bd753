"""Loading ``.pt`` files without running code from them.

``torch.load(weights_only=True)`` rebuilds tensors and plain containers only, plus the few
DeepSpeed types its checkpoints hold (allowlisted below). DeepSpeed's own loaders unpickle with
``weights_only=False``; they are called only on checkpoints that :func:`unsafe_file` passed.
"""
from __future__ import annotations

import glob
import os
import pickle
from typing import Any, Optional

import torch


def allowed_globals() -> list[type]:
    """The non-tensor types DeepSpeed writes into its model and optimizer state files (ZeRO 0-3,
    fp32/bf16/fp16, and its universal conversion)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load(path: str, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with DeepSpeed's checkpoint types allowed."""
    with torch.serialization.safe_globals(allowed_globals()):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def unsafe_file(directory: str) -> Optional[str]:
    """The first ``.pt`` file under ``directory`` that a weights-only load refuses (it would run
    code, or it is no torch file at all), with the reason; None if all load."""
    for path in sorted(glob.glob(os.path.join(directory, "**", "*.pt"), recursive=True)):
        try:
            load(path, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as err:
            first_line = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
            return f"{path} cannot be loaded as weights only ({first_line})"
    return None
