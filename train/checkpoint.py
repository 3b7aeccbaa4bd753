"""Atomic, verified checkpoints of the DeepSpeed engine plus everything needed to resume exactly.

Layout under ``<run_dir>/checkpoints/``::

    <step>/                  one published checkpoint (DeepSpeed's files under ``<step>/ds/``)
        trainer_state.json   step, tokens, loader position, W&B run id, model/tokenizer identity
        rng/rank<r>.pt       every rank's python / numpy / torch RNG states
        recipe/rank<r>.pt    every rank's recipe state (e.g. state passing's carried recurrent
                             states), when the recipe carries one
        config.yaml          the resolved job config
        manifest.json        every file above with its size and sha256 (``recurlm.models.checkpoint_files``)
    latest                   a text file naming the newest published step

A save writes into ``.tmp-<step>/``; once every rank is done, rank 0 fsyncs the files and
directories, writes the manifest and publishes the directory with one rename, then replaces
``latest``. Any exception on the way (a full disk reported by torch as ``RuntimeError``, an
``OSError``, DeepSpeed's own) removes the partial write and raises :class:`CheckpointError`
saying which checkpoint is still the newest; published checkpoints are never touched by a failed
save. Before writing, a save whose predecessor would not fit in the free space applies retention
first (never removing the newest published checkpoint). Retention renames a checkpoint out of the
way before deleting it, so a kill mid-deletion leaves no half-deleted ``<step>/``;
:meth:`CheckpointManager.remove_debris` clears what interrupted saves and deletions leave.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from recurlm.models.checkpoint_files import (LATEST, MANIFEST, STATE_FILE, CheckpointError, broadcast_from_rank0,
                                             candidate_steps, is_valid, load_weights_only, mark_verified, problem,
                                             published_steps, read_state, unsafe_file, verify, write_manifest)
from recurlm.train.distributed import all_reduce_max, barrier
from recurlm.train.durable import fsync_tree, publish, remove_file, tree_bytes, write_atomic

TMP_PREFIX = ".tmp-"
"""A save in progress (or interrupted): ``.tmp-<step>/``."""
TRASH_PREFIX = ".trash-"
"""A checkpoint being deleted or replaced: ``.trash-<step>/``."""
ROOM_MARGIN = 1.05
"""A save needs the previous checkpoint's size times this in free space before retention is applied early."""

# what the trainer reads of a checkpoint lives with the model (evaluation and export need it without training)
__all__ = ["CheckpointError", "CheckpointManager", "STATE_FILE", "LATEST", "is_valid", "problem", "verify", "read_state"]


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain values, so that ``torch.load(weights_only=True)`` reads it."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _universal_info() -> dict[str, Any]:
    """Marks the checkpoint as convertible by ``ds_to_universal`` (no tensor or pipeline parallelism)."""
    from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                UNIVERSAL_CHECKPOINT_VERSION_VALUE)

    return {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}


@dataclass
class CheckpointManager:
    root: str
    """``<run_dir>/checkpoints``."""
    rank: int = 0
    keep_last: int = 3
    keep_every: int = 0
    log: Callable[[str], None] = field(default=lambda message: None)
    """Receives notes that do not stop the run (retention applied early, a stale ``latest``)."""

    def path(self, step: int) -> str:
        return os.path.join(self.root, str(step))

    def save(self, engine, step: int, trainer_state: dict[str, Any], config_yaml: str,
             recipe_state: Optional[dict[str, Any]] = None) -> str:
        """Save collectively (every rank calls it), with this rank's ``recipe_state``
        (``Recipe.state_dict()``) if not empty. Returns the published directory; raises
        :class:`CheckpointError` (on every rank) if any rank failed, after removing the partial write."""
        tmp = os.path.join(self.root, f"{TMP_PREFIX}{step}")
        final = self.path(step)
        error: Optional[BaseException] = None
        try:
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
                os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
                self._make_room(step)
        except Exception as err:
            error = err
        if not all_reduce_max(float(error is not None)):
            try:
                engine.save_checkpoint(os.path.join(tmp, "ds"), tag="state", save_latest=False,
                                       client_state=_universal_info())
                torch.save(rng_state(), os.path.join(tmp, "rng", f"rank{self.rank}.pt"))
                if recipe_state:
                    os.makedirs(os.path.join(tmp, "recipe"), exist_ok=True)
                    torch.save(recipe_state, os.path.join(tmp, "recipe", f"rank{self.rank}.pt"))
                if self.rank == 0:
                    write_atomic(os.path.join(tmp, STATE_FILE), json.dumps(trainer_state, indent=1))
                    write_atomic(os.path.join(tmp, "config.yaml"), config_yaml)
            except Exception as err:  # a full disk (torch: RuntimeError), an I/O error, DeepSpeed's own
                error = err
        if not all_reduce_max(float(error is not None)) and self.rank == 0:
            try:  # every rank's files are written: make them durable, list them, publish
                fsync_tree(tmp)
                write_manifest(tmp)
                publish(tmp, final, os.path.join(self.root, f"{TRASH_PREFIX}{step}"))
            except Exception as err:
                error = err
        if all_reduce_max(float(error is not None)):
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            barrier()
            newest = self.latest()
            kept = (f"the newest checkpoint is still {newest} (step {os.path.basename(newest)})" if newest
                    else "no checkpoint of this run exists")
            cause = f"{type(error).__name__}: {error}" if error is not None else "it failed on another rank"
            raise CheckpointError(f"saving step {step} failed ({cause}); the partial write {tmp} was removed "
                                  f"and {kept}")
        if self.rank == 0:
            self._point_latest(step)
            try:
                self._apply_retention(step)
            except OSError as err:  # the new checkpoint is published: a failed deletion is only a note
                self.log(f"retention after saving step {step} failed ({err}); older checkpoints stay")
        barrier()
        mark_verified(final)
        return final

    def _point_latest(self, step: int) -> None:
        """Make ``latest`` name ``step``. If that write fails, remove ``latest``: resuming then takes
        the newest published step, which is this one."""
        pointer = os.path.join(self.root, LATEST)
        try:
            write_atomic(pointer, str(step))
        except OSError as err:
            remove_file(pointer)
            self.log(f"could not update {pointer} ({err}); removed it, so resume=auto takes the newest "
                     f"published checkpoint, step {step}")

    def _make_room(self, step: int) -> None:
        """If the newest published checkpoint would not fit in the free space again, apply the
        retention the save of ``step`` would apply afterwards now (keeping the newest published)."""
        steps = self.published_steps()
        if not steps:
            return
        need = tree_bytes(self.path(steps[-1])) * ROOM_MARGIN
        free = shutil.disk_usage(self.root).free
        if free >= need:
            return
        removed = self._apply_retention(step, protect=steps[-1])
        free = shutil.disk_usage(self.root).free
        self.log(f"{free / 2**20:.1f} MiB free, the last checkpoint took {need / ROOM_MARGIN / 2**20:.1f} MiB: "
                 f"applied retention before saving step {step} (removed steps {removed or 'none'})"
                 + ("" if free >= need else "; the save may still not fit"))

    def _apply_retention(self, newest: int, protect: Optional[int] = None) -> list[int]:
        """Delete published checkpoints outside keep-last / keep-every, counting ``newest`` (saved
        or about to be) as one of them; returns the deleted steps."""
        steps = self.published_steps()
        candidates = sorted(set(steps) | {newest})
        keep = set(candidates[-self.keep_last:]) if self.keep_last > 0 else set(candidates)
        keep |= {newest, protect}
        if self.keep_every > 0:
            keep |= {s for s in steps if s % self.keep_every == 0}
        removed = [s for s in steps if s not in keep]
        for s in removed:
            self._delete(s)
        return removed

    def _delete(self, step: int) -> None:
        """Unpublish ``step`` with one rename, then delete it (a kill in between leaves only debris)."""
        trash = os.path.join(self.root, f"{TRASH_PREFIX}{step}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(self.path(step), trash)
        shutil.rmtree(trash, ignore_errors=True)

    def remove_debris(self) -> list[str]:
        """Delete what interrupted saves and deletions left (``.tmp-*``, ``.trash-*``,
        ``latest.tmp-*``, step directories with neither a manifest nor the files of a checkpoint);
        returns the removed paths. Rank 0 only, while holding the run's lock."""
        if not os.path.isdir(self.root):
            return []
        removed = []
        for name in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, name)
            stale = (name.startswith((TMP_PREFIX, TRASH_PREFIX, f"{LATEST}.tmp-"))
                     or (name.isdigit() and os.path.isdir(path) and not os.path.isfile(os.path.join(path, MANIFEST))
                         and not _has_checkpoint_files(path)))
            if not stale:
                continue
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                remove_file(path)
            removed.append(path)
        return removed

    def published_steps(self) -> list[int]:
        """Steps whose directory holds a manifest (files are not checked: see :func:`problem`)."""
        return published_steps(self.root)

    def _candidates(self) -> list[int]:
        """Published steps, the one ``latest`` names first, then the others newest first."""
        return candidate_steps(self.root)

    def latest(self) -> Optional[str]:
        """The newest published checkpoint (the one ``latest`` names, else the highest step), unverified."""
        steps = self._candidates()
        return self.path(steps[0]) if steps else None

    def newest_intact(self) -> tuple[Optional[str], list[str]]:
        """(the newest checkpoint that verifies, or None; what was skipped and why). Rank 0 checks,
        every rank gets its answer."""
        found, skipped = None, []
        if self.rank == 0:
            for step in self._candidates():
                reason = problem(self.path(step))
                if reason is None:
                    found = self.path(step)
                    break
                skipped.append(f"skipped {self.path(step)}: {reason}")
        found, skipped = broadcast_from_rank0((found, skipped))
        if found is not None:
            mark_verified(found)
        return found, skipped


def _has_checkpoint_files(path: str) -> bool:
    """Has the files of a checkpoint written before manifests existed (kept: the user may want it)."""
    return os.path.isfile(os.path.join(path, STATE_FILE)) and os.path.isdir(os.path.join(path, "ds", "state"))


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
    """Convert ``<path>/ds/state`` (verified) to ``<path>/ds/state_universal`` once (rank 0; others
    wait). The converted files are not in the manifest: they are checked to load weights-only."""
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
    reason = broadcast_from_rank0(unsafe_file(target) if rank == 0 else None)
    if reason is not None:
        raise CheckpointError(f"refusing the universal conversion of {path}: {reason}")


def load(engine, path: str, rank: int, load_optimizer: bool = True, universal: bool = False) -> dict[str, Any]:
    """Load model (+ optimizer) states and this rank's RNG from a checkpoint that verifies;
    returns the trainer state."""
    verify(path)
    state = read_state(path)
    load_path, _ = engine.load_checkpoint(os.path.join(path, "ds"), tag=UNIVERSAL_TAG if universal else "state",
                                          load_optimizer_states=load_optimizer,
                                          load_lr_scheduler_states=False,
                                          load_module_strict=True)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load {path}/ds/state")
    rng_file = os.path.join(path, "rng", f"rank{rank}.pt")
    if load_optimizer and os.path.isfile(rng_file) and not universal:
        set_rng_state(load_weights_only(rng_file))
    return state


def load_recipe_state(path: str, rank: int, world_size: int) -> dict[str, Any]:
    """This rank's saved recipe state; {} if there is none or the checkpoint was written at another
    world size (ranks then hold other rows, so a carried state would continue the wrong lanes)."""
    recipe_file = os.path.join(path, "recipe", f"rank{rank}.pt")
    if not os.path.isfile(recipe_file) or read_state(path).get("world_size", world_size) != world_size:
        return {}
    return load_weights_only(recipe_file)
