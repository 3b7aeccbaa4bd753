"""The files of a training checkpoint, as inference reads them: no DeepSpeed engine needed.

A checkpoint directory (written by ``recurlm.train.checkpoint``) holds ``trainer_state.json``,
DeepSpeed's files under ``ds/`` and a manifest: every file with its size and sha256, written last
before the rename that publishes the checkpoint. A checkpoint whose files match their manifest is
complete and undamaged; one that does not is skipped (``resume=auto``) or refused (``resume=<path>``,
evaluation, export) with the file named. Files added after publishing (``export/``, DeepSpeed's
universal conversion under ``ds/``) are not in the manifest and not checked by it.

Nothing here unpickles code: ``.pt`` files load weights-only (``torch.load(weights_only=True)`` with
the few DeepSpeed types its checkpoints hold allowlisted), and DeepSpeed's own loaders (which
unpickle with ``weights_only=False``) run only on checkpoints that :func:`verify` passed.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import pickle
from typing import Any, Optional

import torch
import torch.distributed as dist

MANIFEST = "manifest.json"
FORMAT = "recurlm-checkpoint-manifest"
STATE_FILE = "trainer_state.json"
LATEST = "latest"
"""A text file beside the step directories naming the newest published step."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or resumed from (damaged, missing files, another model
    or tokenizer); the message names the checkpoint and the file."""


def file_sha256(path: str, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: str) -> list[str]:
    """Paths of every file under ``directory``, relative to it, in a stable order."""
    found = []
    for parent, dirs, files in os.walk(directory):
        dirs.sort()
        found += [os.path.relpath(os.path.join(parent, name), directory) for name in sorted(files)]
    return [f for f in found if f != MANIFEST]


def write_manifest(directory: str) -> None:
    """Hash every file under ``directory`` and write ``manifest.json`` (fsynced)."""
    files = {rel: {"size": os.path.getsize(os.path.join(directory, rel)),
                   "sha256": file_sha256(os.path.join(directory, rel))} for rel in _files(directory)}
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump({"format": FORMAT, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def manifest_problem(directory: str, checksums: bool = True) -> Optional[str]:
    """None if every file the manifest lists is present with its size (and, with ``checksums``,
    its sha256); else what is wrong, naming the file."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return f"{path} is missing (an interrupted save, or a checkpoint of an older recurlm)"
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path} is unreadable ({err})"
    for rel, expected in files.items():
        file = os.path.join(directory, rel)
        if not os.path.isfile(file):
            return f"{file} is missing"
        size = os.path.getsize(file)
        if size != expected["size"]:
            return f"{file} has {size} bytes, its manifest says {expected['size']} (truncated or overwritten)"
    if checksums:
        for rel, expected in files.items():
            if file_sha256(os.path.join(directory, rel)) != expected["sha256"]:
                return f"{os.path.join(directory, rel)} does not match its sha256 in the manifest (damaged)"
    return None


def allowed_globals() -> list[type]:
    """The non-tensor types DeepSpeed writes into its model and optimizer state files (ZeRO 0-3,
    fp32/bf16/fp16, and its universal conversion)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_weights_only(path: str, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with DeepSpeed's checkpoint types allowed."""
    with torch.serialization.safe_globals(allowed_globals()):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def unsafe_file(directory: str) -> Optional[str]:
    """The first ``.pt`` file under ``directory`` that a weights-only load refuses (it would run
    code, or it is no torch file at all), with the reason; None if all load."""
    for path in sorted(glob.glob(os.path.join(directory, "**", "*.pt"), recursive=True)):
        try:
            load_weights_only(path, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as err:
            first_line = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
            return f"{path} cannot be loaded as weights only ({first_line})"
    return None


def broadcast_from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself outside a multi-process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def is_valid(path: str) -> bool:
    """A published checkpoint directory: it has a manifest and a trainer state (cheap, unverified)."""
    return os.path.isfile(os.path.join(path, MANIFEST)) and os.path.isfile(os.path.join(path, STATE_FILE))


def problem(path: str) -> Optional[str]:
    """None if ``path`` is a complete, undamaged checkpoint that loads without running code: its
    files match the manifest (sizes, sha256), its trainer state parses, every ``.pt`` file loads
    weights-only. Else what is wrong, naming the file."""
    if not os.path.isdir(path):
        return f"{path} is not a directory"
    reason = manifest_problem(path)
    if reason is None:
        try:
            with open(os.path.join(path, STATE_FILE)) as f:
                json.load(f)
        except (OSError, ValueError) as err:
            reason = f"{os.path.join(path, STATE_FILE)} is unreadable ({err})"
    return reason or unsafe_file(path)


_VERIFIED: set[str] = set()
"""Checkpoints this process wrote or verified: not hashed again (a rollback, a resume after the search)."""


def mark_verified(path: str) -> None:
    """Record that ``path`` was written or verified by this process (:func:`verify` skips it)."""
    _VERIFIED.add(os.path.realpath(path))


def verify(path: str) -> None:
    """Raise :class:`CheckpointError` naming the file if ``path`` fails :func:`problem`
    (rank 0 checks, every rank raises). DeepSpeed's loaders run only after this passed."""
    key = os.path.realpath(path)
    if key in _VERIFIED:
        return
    reason = broadcast_from_rank0(problem(path) if not dist.is_initialized() or dist.get_rank() == 0 else None)
    if reason is not None:
        raise CheckpointError(f"refusing checkpoint {path}: {reason}. resume=auto takes the newest checkpoint "
                              "that verifies; resume=none starts over (in a new run_dir, to keep this one's records)")
    _VERIFIED.add(key)


def read_state(path: str) -> dict[str, Any]:
    """The trainer state (``trainer_state.json``) of a published checkpoint."""
    if not is_valid(path):
        raise CheckpointError(f"{path} is not a published recurlm checkpoint (need {MANIFEST} and {STATE_FILE})")
    try:
        with open(os.path.join(path, STATE_FILE)) as f:
            return json.load(f)
    except ValueError as err:
        raise CheckpointError(f"{os.path.join(path, STATE_FILE)} is unreadable ({err})") from None


def published_steps(root: str) -> list[int]:
    """Steps under ``root`` (``<run_dir>/checkpoints``) whose directory holds a manifest (files are
    not checked: see :func:`problem`), ascending."""
    if not os.path.isdir(root):
        return []
    return sorted(int(n) for n in os.listdir(root) if n.isdigit() and is_valid(os.path.join(root, n)))


def candidate_steps(root: str) -> list[int]:
    """Published steps, the one ``latest`` names first, then the others newest first."""
    steps = published_steps(root)[::-1]
    pointer = os.path.join(root, LATEST)
    named = open(pointer).read().strip() if os.path.isfile(pointer) else ""
    if named.isdigit() and int(named) in steps:
        steps.remove(int(named))
        steps.insert(0, int(named))
    return steps


def resolve_checkpoint(path: str) -> str:
    """A run dir, its checkpoints dir, or one checkpoint → one checkpoint directory (unverified)."""
    for candidate in (path, os.path.join(path, "checkpoints")):
        if is_valid(candidate):
            return candidate
        steps = candidate_steps(candidate)
        if steps:
            return os.path.join(candidate, str(steps[0]))
    raise CheckpointError(f"no recurlm checkpoint found at {path}")


def consolidated_state_dict(checkpoint_dir: str) -> dict[str, torch.Tensor]:
    """Full float32 weights from ``<checkpoint>/ds/state`` whatever ZeRO stage wrote them."""
    verify(checkpoint_dir)
    ds_dir = os.path.join(checkpoint_dir, "ds")
    state_dir = os.path.join(ds_dir, "state")
    if glob.glob(os.path.join(state_dir, "*optim_states.pt")) and glob.glob(os.path.join(state_dir, "zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(ds_dir, tag="state"))
    files = sorted(glob.glob(os.path.join(state_dir, "mp_rank_*_model_states.pt")))
    if not files:
        raise CheckpointError(f"{state_dir} holds no DeepSpeed model states")
    return load_weights_only(files[0])["module"]
