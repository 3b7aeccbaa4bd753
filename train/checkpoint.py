"""Atomic checkpoints of the DeepSpeed engine plus everything needed to resume exactly.

Layout under ``<run_dir>/checkpoints/``::

    <step>/                  one published checkpoint (DeepSpeed's files under ``<step>/ds/``)
        trainer_state.json   step, tokens, loader position, W&B run id, model/tokenizer identity
        rng/rank<r>.pt       every rank's python / numpy / torch RNG states
        recipe/rank<r>.pt    every rank's recipe state (e.g. state passing's carried recurrent
                             states), when the recipe carries one
        config.yaml          the resolved job config
    latest                   a text file naming the newest published step

A save writes into ``.tmp-<step>/`` and publishes it with one rename after every rank is done;
``latest`` is replaced atomically last. A crash or a full disk during a save therefore leaves
the previous checkpoint intact, and ``latest`` never names a partial one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from recurlm.train.distributed import all_reduce_max, barrier

STATE_FILE = "trainer_state.json"
LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (missing files, another model or tokenizer)."""


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _universal_info() -> dict[str, Any]:
    """Marks the checkpoint as convertible by ``ds_to_universal`` (no tensor or pipeline parallelism)."""
    from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                UNIVERSAL_CHECKPOINT_VERSION_VALUE)

    return {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class CheckpointManager:
    root: str
    """``<run_dir>/checkpoints``."""
    rank: int = 0
    keep_last: int = 3
    keep_every: int = 0

    def path(self, step: int) -> str:
        return os.path.join(self.root, str(step))

    def save(self, engine, step: int, trainer_state: dict[str, Any], config_yaml: str,
             recipe_state: Optional[dict[str, Any]] = None) -> str:
        """Save collectively (every rank calls it), with this rank's ``recipe_state``
        (``Recipe.state_dict()``) if not empty. Returns the published directory."""
        tmp = os.path.join(self.root, f".tmp-{step}")
        final = self.path(step)
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
        barrier()
        error: Optional[BaseException] = None
        try:
            engine.save_checkpoint(os.path.join(tmp, "ds"), tag="state", save_latest=False,
                                   client_state=_universal_info())
            torch.save(rng_state(), os.path.join(tmp, "rng", f"rank{self.rank}.pt"))
            if recipe_state:
                os.makedirs(os.path.join(tmp, "recipe"), exist_ok=True)
                torch.save(recipe_state, os.path.join(tmp, "recipe", f"rank{self.rank}.pt"))
            if self.rank == 0:
                _write_atomic(os.path.join(tmp, STATE_FILE), json.dumps(trainer_state, indent=1))
                _write_atomic(os.path.join(tmp, "config.yaml"), config_yaml)
        except OSError as err:  # disk full, quota, I/O error: keep the previous checkpoint
            error = err
        if all_reduce_max(float(error is not None)):
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            barrier()
            raise CheckpointError(f"saving step {step} failed ({error or 'on another rank'}); "
                                  f"the previous checkpoint is intact")
        if self.rank == 0:
            if os.path.exists(final):  # re-saving a step (e.g. after a rollback): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _write_atomic(os.path.join(self.root, LATEST), str(step))
            self._apply_retention(step)
        barrier()
        return final

    def _apply_retention(self, newest: int) -> None:
        steps = sorted(self.published_steps())
        keep = set(steps[-self.keep_last:]) if self.keep_last > 0 else set(steps)
        keep.add(newest)
        if self.keep_every > 0:
            keep |= {s for s in steps if s % self.keep_every == 0}
        for s in steps:
            if s not in keep:
                shutil.rmtree(self.path(s), ignore_errors=True)

    def published_steps(self) -> list[int]:
        if not os.path.isdir(self.root):
            return []
        return sorted(int(n) for n in os.listdir(self.root) if n.isdigit() and is_valid(self.path(int(n))))

    def latest(self) -> Optional[str]:
        """The newest valid checkpoint: the one ``latest`` names, else the highest valid step."""
        pointer = os.path.join(self.root, LATEST)
        if os.path.isfile(pointer):
            step = open(pointer).read().strip()
            if step.isdigit() and is_valid(self.path(int(step))):
                return self.path(int(step))
        steps = self.published_steps()
        return self.path(steps[-1]) if steps else None


def is_valid(path: str) -> bool:
    return os.path.isfile(os.path.join(path, STATE_FILE)) and os.path.isdir(os.path.join(path, "ds", "state"))


def read_state(path: str) -> dict[str, Any]:
    if not is_valid(path):
        raise CheckpointError(f"{path} is not a complete recurlm checkpoint (need {STATE_FILE} and ds/state/)")
    with open(os.path.join(path, STATE_FILE)) as f:
        return json.load(f)


def check_compatible(saved: dict[str, Any], model_identity: dict[str, Any], tokenizer_sha256: str, path: str) -> None:
    """Refuse a checkpoint of another family, size or tokenizer, saying what differs."""
    problems = []
    for key, value in model_identity.items():
        if saved["model"].get(key) != value:
            problems.append(f"model.{key}: checkpoint has {saved['model'].get(key)!r}, this run {value!r}")
    if saved.get("tokenizer_sha256") != tokenizer_sha256:
        problems.append(f"tokenizer sha256: checkpoint {str(saved.get('tokenizer_sha256'))[:12]}, this run {tokenizer_sha256[:12]}")
    if problems:
        raise CheckpointError(f"cannot resume from {path}: it belongs to another model or tokenizer:\n  "
                              + "\n  ".join(problems))


UNIVERSAL_TAG = "state_universal"


def needs_universal(path: str, world_size: int, zero_stage: int) -> bool:
    """A ZeRO checkpoint written at another world size loads only through DeepSpeed's universal format."""
    saved = read_state(path)
    return zero_stage > 0 and saved.get("world_size", world_size) != world_size


def make_universal(path: str, rank: int) -> None:
    """Convert ``<path>/ds/state`` to ``<path>/ds/state_universal`` once (rank 0; others wait)."""
    import subprocess
    import sys

    target = os.path.join(path, "ds", UNIVERSAL_TAG)
    if rank == 0 and not os.path.isdir(target):
        tmp = target + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        result = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                                 "--input_folder", os.path.join(path, "ds", "state"), "--output_folder", tmp,
                                 "--num_extract_workers", "1", "--num_merge_workers", "1"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise CheckpointError(f"converting {path} to a universal checkpoint failed:\n{result.stderr[-2000:]}")
        os.replace(tmp, target)
    barrier()


def load(engine, path: str, rank: int, load_optimizer: bool = True, universal: bool = False) -> dict[str, Any]:
    """Load model (+ optimizer) states and this rank's RNG; returns the trainer state."""
    state = read_state(path)
    load_path, _ = engine.load_checkpoint(os.path.join(path, "ds"), tag=UNIVERSAL_TAG if universal else "state",
                                          load_optimizer_states=load_optimizer,
                                          load_lr_scheduler_states=False,
                                          load_module_strict=True)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load {path}/ds/state")
    rng_file = os.path.join(path, "rng", f"rank{rank}.pt")
    if load_optimizer and os.path.isfile(rng_file) and not universal:
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state


def load_recipe_state(path: str, rank: int, world_size: int) -> dict[str, Any]:
    """This rank's saved recipe state; {} if there is none or the checkpoint was written at another
    world size (ranks then hold other rows, so a carried state would continue the wrong lanes)."""
    recipe_file = os.path.join(path, "recipe", f"rank{rank}.pt")
    if not os.path.isfile(recipe_file) or read_state(path).get("world_size", world_size) != world_size:
        return {}
    return torch.load(recipe_file, map_location="cpu", weights_only=True)
