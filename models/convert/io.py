"""Streaming weight files for the format converters: read a checkpoint tensor by tensor, write one
shard at a time, and publish a directory only once it is complete.

- ``WeightReader(path)``: a directory holding ``model.safetensors``, a sharded
  ``model.safetensors.index.json``, ``pytorch_model.bin`` or one ``.pth`` / ``.pt``, or such a file
  itself. safetensors files are opened lazily (``safe_open``: a tensor is read when asked for);
  torch files are memory-mapped (``torch.load(mmap=True)``), so neither holds the weights twice.
- ``ShardedWriter(out_dir)``: ``add(key, tensor)`` tensors as they are converted; a shard is written
  (and dropped from memory) once ``max_shard_bytes`` is reached; ``close()`` names the shards
  ``model-0000i-of-0000n.safetensors`` with a ``model.safetensors.index.json`` (or one
  ``model.safetensors``), transformers' layout.
- ``staged_output(out)``: a context manager yielding a temporary sibling directory that replaces
  ``out`` on success and is deleted on error, so a failed conversion leaves nothing in ``out``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

SAFETENSORS, INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_FILES = ("pytorch_model.bin", "model.pth", "model.pt")
ALLOWED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class ConversionError(ValueError):
    """Bad input to a conversion; the message names the file and what is wrong with it."""


def _weight_files(path: str) -> tuple[str, list[str]]:
    """(kind, files): kind is "safetensors" or "torch"."""
    if os.path.isfile(path):
        if path.endswith(".safetensors"):
            return "safetensors", [path]
        if path.endswith(INDEX):
            return _weight_files(os.path.dirname(path))
        return "torch", [path]
    if not os.path.isdir(path):
        raise ConversionError(f"{path}: no such file or directory")
    index = os.path.join(path, INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConversionError(f"{index}: no 'weight_map' object")
        files = sorted(set(weight_map.values()))
        missing = [name for name in files if not os.path.isfile(os.path.join(path, name))]
        if missing:
            raise ConversionError(f"{index} lists shard(s) that do not exist: {missing}")
        return "safetensors", [os.path.join(path, name) for name in files]
    if os.path.isfile(os.path.join(path, SAFETENSORS)):
        return "safetensors", [os.path.join(path, SAFETENSORS)]
    torch_files = [os.path.join(path, n) for n in TORCH_FILES if os.path.isfile(os.path.join(path, n))]
    torch_files = torch_files or sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith((".pth", ".pt")))
    if len(torch_files) == 1:
        return "torch", torch_files
    raise ConversionError(f"{path}: no weights found (looked for {INDEX}, {SAFETENSORS}, {', '.join(TORCH_FILES)} "
                          f"or a single *.pth / *.pt){'; several torch files: ' + str(torch_files) if torch_files else ''}")


class WeightReader:
    """Tensors of a checkpoint by name, read on demand (see the module docstring for ``path``)."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self.path = path
        self.kind, self.files = _weight_files(path)
        self._file_of: dict[str, str] = {}
        self._handles: dict[str, object] = {}
        self._torch: dict[str, torch.Tensor] = {}
        if self.kind == "safetensors":
            for file in self.files:
                handle = safe_open(file, framework="pt")
                self._handles[file] = handle
                self._file_of.update({key: file for key in handle.keys()})
        else:
            try:
                state = torch.load(self.files[0], map_location="cpu", mmap=True, weights_only=True)
            except Exception as err:  # a pickle that is not a plain state dict, a truncated file, ...
                raise ConversionError(f"{self.files[0]}: not a readable torch state dict ({err})") from err
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ConversionError(f"{self.files[0]}: expected a dict of tensors (a state dict)")
            self._torch = state
            self._file_of = {key: self.files[0] for key in state}

    def keys(self) -> list[str]:
        return list(self._file_of)

    def __contains__(self, key: str) -> bool:
        return key in self._file_of

    def file_of(self, key: str) -> str:
        return self._file_of[key]

    def shape(self, key: str) -> torch.Size:
        if self.kind == "torch":
            return self._torch[key].shape
        return torch.Size(self._handles[self._file_of[key]].get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key`` (float32 / bfloat16 / float16; any other dtype is a ConversionError)."""
        if key not in self._file_of:
            raise ConversionError(f"{self.path}: no tensor {key!r}")
        tensor = self._torch[key] if self.kind == "torch" else self._handles[self._file_of[key]].get_tensor(key)
        if tensor.dtype not in ALLOWED_DTYPES:
            raise ConversionError(f"{self._file_of[key]}: tensor {key!r} has dtype {tensor.dtype}; "
                                  f"expected one of float32, bfloat16, float16")
        return tensor


class ShardedWriter:
    """Writes tensors into safetensors shards of at most ``max_shard_bytes`` (one tensor may exceed it)."""

    def __init__(self, out_dir: str, max_shard_bytes: Optional[int] = None, dtype: torch.dtype = torch.float32):
        self.out_dir, self.max_shard_bytes, self.dtype = out_dir, max_shard_bytes, dtype
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []  # (temporary file name, keys)
        self.total_bytes = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        # clone: a tensor shared with another key (tied weights) or a view of a mmapped source
        tensor = tensor.detach().to("cpu", self.dtype).contiguous().clone()
        size = tensor.numel() * tensor.element_size()
        if self.max_shard_bytes and self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[key] = tensor
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        name = f"shard-{len(self._shards):05d}.tmp"
        save_file(self._pending, os.path.join(self.out_dir, name), metadata={"format": "pt"})
        self._shards.append((name, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Write what is pending, give the shards their final names; returns the file names."""
        if self._pending or not self._shards:
            self._flush()
        if len(self._shards) == 1:
            os.replace(os.path.join(self.out_dir, self._shards[0][0]), os.path.join(self.out_dir, SAFETENSORS))
            return [SAFETENSORS]
        weight_map, names = {}, []
        for i, (tmp, keys) in enumerate(self._shards):
            name = f"model-{i + 1:05d}-of-{len(self._shards):05d}.safetensors"
            os.replace(os.path.join(self.out_dir, tmp), os.path.join(self.out_dir, name))
            weight_map.update({key: name for key in keys})
            names.append(name)
        with open(os.path.join(self.out_dir, INDEX), "w") as f:
            json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, f, indent=1)
        return names


@contextmanager
def staged_output(out: str) -> Iterator[str]:
    """A fresh temporary directory next to ``out``; on success it becomes ``out`` (an existing ``out``
    must be empty or absent), on error it is removed and ``out`` is untouched."""
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConversionError(f"{out}: output exists and is not an empty directory")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if os.path.isdir(out):
        os.rmdir(out)
    os.replace(staging, out)
