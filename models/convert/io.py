"""Streaming weight files for the format converters: read a checkpoint tensor by tensor, write one
shard at a time, and publish a directory only once it is complete.

- ``WeightReader(path)``: a directory holding ``model.safetensors``, a sharded
  ``model.safetensors.index.json``, ``pytorch_model.bin`` or one ``.pth`` / ``.pt``, or such a file
  itself. safetensors files are opened lazily (``safe_open``: a tensor is read when asked for);
  torch files are memory-mapped (``torch.load(mmap=True)``), so neither holds the weights twice.
- ``ShardedWriter(out_dir, layout)``: the output's tensor names and shapes are known before any
  weight is converted (from the model built on the meta device), so every safetensors header is
  laid out first and ``add(key, tensor)`` appends each tensor's bytes as it is converted: only one
  tensor is in memory at a time. Shards of at most ``max_shard_bytes`` are named
  ``model-0000i-of-0000n.safetensors`` with a ``model.safetensors.index.json`` (or one
  ``model.safetensors``), transformers' layout.
- ``staged_output(out)``: a context manager yielding a temporary sibling directory that replaces
  ``out`` on success and is deleted on error, so a failed conversion leaves nothing in ``out``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
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


class SafetensorsStream:
    """One safetensors file written tensor by tensor: the header (names, shapes, offsets) is laid out
    from the planned ``layout`` first, then each tensor's float32 bytes are appended as it arrives,
    in layout order. Only the tensor being written is in memory."""

    def __init__(self, path: str, layout: list[tuple[str, tuple[int, ...]]]):
        self.path, self.layout, self._next = path, layout, 0
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for key, shape in layout:
            size = 4 * math.prod(shape)
            header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        self._file = open(path, "wb")
        self._file.write(struct.pack("<Q", len(encoded)) + encoded)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        expected_key, shape = self.layout[self._next]
        if key != expected_key or tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{self.path}: got {key} {tuple(tensor.shape)}, the layout has {expected_key} {shape} next")
        array = tensor.detach().to("cpu", torch.float32).contiguous().numpy().reshape(-1)
        if array.size:  # the bytes of the tensor itself (no copy for a float32 source)
            self._file.write(memoryview(array).cast("B"))
        self._next += 1

    def close(self) -> None:
        self._file.close()
        if self._next != len(self.layout):
            raise ValueError(f"{self.path}: {len(self.layout) - self._next} planned tensors were never written")


class ShardedWriter:
    """Writes float32 tensors, in the order of ``layout`` ((name, shape) pairs planned in advance),
    into safetensors shards of at most ``max_shard_bytes`` (a larger tensor gets a shard of its own):
    ``model.safetensors`` if one shard, else ``model-0000i-of-0000n.safetensors`` with
    ``model.safetensors.index.json``. Each shard streams (``SafetensorsStream``)."""

    def __init__(self, out_dir: str, layout: list[tuple[str, tuple[int, ...]]], max_shard_bytes: Optional[int] = None):
        shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
        size = 0
        for key, shape in layout:
            nbytes = 4 * math.prod(shape)
            if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((key, tuple(shape)))
            size += nbytes
        names = ([SAFETENSORS] if len(shards) == 1 else
                 [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
        self.out_dir, self.total_bytes = out_dir, sum(4 * math.prod(shape) for _, shape in layout)
        self._plan = list(zip(names, shards))
        self._stream: Optional[SafetensorsStream] = None
        self._index = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        if self._stream is None or self._stream._next == len(self._stream.layout):
            if self._stream is not None:
                self._stream.close()
                self._index += 1
            name, layout = self._plan[self._index]
            self._stream = SafetensorsStream(os.path.join(self.out_dir, name), layout)
        self._stream.write(key, tensor)

    def close(self) -> list[str]:
        """Finish the last shard and write the index (several shards); returns the file names."""
        if self._stream is None or self._index != len(self._plan) - 1:
            raise ValueError(f"{self.out_dir}: closed before every planned tensor was written")
        self._stream.close()
        names = [name for name, _ in self._plan]
        if len(names) > 1:
            weight_map = {key: name for name, layout in self._plan for key, _ in layout}
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
