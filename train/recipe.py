"""Training recipes: what a phase does beyond plain next-token prediction from zero states.

A recipe decides, for every micro-batch, the *initial* recurrent state the model starts from and
whether the *final* state must be returned to it afterwards. ``Trainer.train_step`` asks::

    state, resets = recipe.initial_state(micro, resets)   # before the forward
    loss, final = engine(ids, resets=resets, state=state, return_state=recipe.wants_final_state, ...)
    recipe.observe(micro, final)                                  # after the backward

Recipes (``recipe=<option>``, configs/recipe/):

- ``none``: zero states (plain pretraining).
- ``length_gen/state_passing``: truncated BPTT. With ``data.loader_mode=documents_in_order`` row i
  of step n+1 continues row i of step n; the final state of row i (detached) initialises it.
  ``resets`` are left alone, so a row starting a new document (or a new epoch of its lane) still
  drops the carried state.
- ``length_gen/noise_init``: content entries of the initial state drawn from N(0, noise_scale^2).
- ``length_gen/other_sequence_init``: the initial state of row i is the final state (detached) of
  another row of the previous step (a random derangement of the rows).
- ``state_expansion``: plain training started from an expanded export (``init_from``) with a
  re-warmed learning-rate schedule.

The two "fake history" recipes (noise, other sequence) clear ``resets[:, 0]``: a row that starts
at a document start would otherwise discard the injected state at its first token. Bookkeeping
entries of a state (keys starting with ``_``: positions, cache validity, stabilisers) are never
drawn at random: they come from a real final state of the previous step, so the model sees a
consistent "this row continues something" state (e.g. Griffin's ``_pos`` > 0, which keeps the
RG-LRU state at the first token).

Checkpoints: ``Recipe.state_dict()`` (the carried states of this rank, and the noise / permutation
generator) is saved per rank with every checkpoint and restored on resume, so a resumed run
continues exactly (``recurlm.train.checkpoint``). A rollback after a non-finite loss drops them.

Rows and ranks: every rank keeps the states of its own rows, per micro-batch index. The
documents-in-order loader gives each rank the same lanes at every step, and the trainer cuts
micro-batches at the same rows every step, so micro-batch i of step n+1 holds the continuations
of micro-batch i of step n whatever the world size or gradient accumulation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from recurlm.models.state import ModelState, is_content

RECIPES = ("none", "state_passing", "noise_init", "other_sequence_init", "state_expansion")


@dataclass
class RecipeConfig:
    name: str = "none"
    """none, state_passing, noise_init, other_sequence_init or state_expansion."""
    init_from: Optional[str] = None
    """Start from these weights (a checkpoint, run dir, export dir, or a checkpoint of another project
    that ``recurlm-convert import`` reads, converted on the fly) instead of a fresh init;
    optimizer, schedule and data position start anew (a post-training phase). Ignored when the run
    resumes from its own checkpoint."""
    model_from_init: bool = True
    """With ``init_from``: take the model config from it (an expanded export brings its larger
    state); False: keep ``model`` and require identical parameter shapes."""
    noise_scale: float = 1.0
    """noise_init: standard deviation of the Gaussian initial states."""
    seed: int = 0
    """noise_init / other_sequence_init: seed of the noise and of the row permutations (mixed
    with the rank, so ranks draw differently)."""


class Recipe:
    """Plain training: no initial state, no final state wanted."""

    wants_final_state = False

    def initial_state(self, micro: int, resets: torch.Tensor) -> tuple[Optional[ModelState], torch.Tensor]:
        """(initial state for micro-batch ``micro`` or None, the resets [b, T] to use)."""
        return None, resets

    def observe(self, micro: int, final: Optional[ModelState]) -> None:
        """Receive the final state of micro-batch ``micro`` (after its backward)."""

    def state_dict(self) -> dict[str, Any]:
        """What this rank carries into the next step (saved with a checkpoint); {} = nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; {} drops whatever is carried (the next step starts afresh)."""


class _Carrying(Recipe):
    """Keeps the detached final state of every micro-batch index for the next step."""

    wants_final_state = True

    def __init__(self):
        self.states: dict[int, ModelState] = {}

    def observe(self, micro, final):
        self.states[micro] = final.detach()

    def state_dict(self):
        # plain containers of CPU tensors: loadable with torch.load(weights_only=True) on any device
        return {"states": {micro: s.to("cpu").layers for micro, s in self.states.items()}}

    def load_state_dict(self, state):
        self.states = {int(micro): ModelState(layers) for micro, layers in state.get("states", {}).items()}


class StatePassing(_Carrying):
    """Truncated BPTT: the detached final state of micro-batch i initialises micro-batch i next step."""

    def initial_state(self, micro, resets):
        state = self.states.get(micro)
        if state is not None and state.batch_size != resets.shape[0]:
            return None, resets  # resumed with another micro-batch size: these rows are other lanes
        return state, resets


class _FromPreviousStep(_Carrying):
    """Shared by the recipes that inject a state that is not the row's own history."""

    def __init__(self, seed: int, rank: int):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)

    def initial_state(self, micro, resets):
        template = self.states.get(micro)
        if template is None or template.batch_size != resets.shape[0]:
            return None, resets  # the first step of the process (or a short last batch): plain
        resets = resets.clone()
        resets[:, 0] = False  # keep the injected state at the first token
        return self.inject(template), resets

    def state_dict(self):
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def inject(self, previous: ModelState) -> ModelState:
        raise NotImplementedError


class NoiseInit(_FromPreviousStep):
    """Content ~ N(0, scale^2); bookkeeping from the previous step's final state of the same rows."""

    def __init__(self, scale: float, seed: int, rank: int):
        super().__init__(seed, rank)
        self.scale = scale

    def inject(self, previous):
        def draw(key: str, t: torch.Tensor) -> torch.Tensor:
            if not is_content(key) or not t.is_floating_point():
                return t
            noise = torch.randn(t.shape, generator=self.generator, dtype=torch.float32) * self.scale
            return noise.to(device=t.device, dtype=t.dtype)

        return previous.map(draw)


class OtherSequenceInit(_FromPreviousStep):
    """Row i starts from the final state of row p(i) != i of the previous step (random derangement)."""

    def inject(self, previous):
        b = previous.batch_size
        order = torch.randperm(b, generator=self.generator)
        source = torch.empty(b, dtype=torch.long)
        source[order] = order.roll(-1)  # a random cycle through all rows: nobody gets its own state
        return previous.select(source)


def build_recipe(cfg: RecipeConfig, loader_mode: str, rank: int = 0) -> Recipe:
    """The recipe object of ``cfg`` (checks the data settings it relies on)."""
    if cfg.name not in RECIPES:
        raise ValueError(f"recipe.name={cfg.name!r}: expected one of {RECIPES}")
    if cfg.name == "state_passing":
        if loader_mode != "documents_in_order":
            raise ValueError("recipe state_passing needs data.loader_mode=documents_in_order (row i of a step "
                             "must continue row i of the previous step)")
        return StatePassing()
    if cfg.name == "noise_init":
        if not cfg.noise_scale >= 0:
            raise ValueError(f"recipe.noise_scale={cfg.noise_scale}: must be >= 0")
        return NoiseInit(cfg.noise_scale, cfg.seed, rank)
    if cfg.name == "other_sequence_init":
        return OtherSequenceInit(cfg.seed, rank)
    if cfg.name == "state_expansion" and not cfg.init_from:
        raise ValueError("recipe state_expansion continues training an expanded model: set recipe.init_from "
                         "to the output of `recurlm-convert expand-state`")
    return Recipe()


def read_initial_weights(path: str) -> tuple[dict, dict[str, torch.Tensor], Optional[str]]:
    """(model config dict, float32 state dict, tokenizer sha256 or None) of ``init_from``: an
    export dir, a checkpoint, a run dir (its newest checkpoint), or another project's checkpoint
    (``recurlm-convert import`` formats), imported on the fly."""
    import json
    import os
    import tempfile

    from safetensors.torch import load_file

    from recurlm.models.convert.formats import foreign_format, import_checkpoint
    from recurlm.models.pretrained import CONFIG, INFO, WEIGHTS, is_export
    from recurlm.train import checkpoint as ckpt
    from recurlm.train.export import consolidated_state_dict, resolve_checkpoint

    if not is_export(path) and foreign_format(path):
        with tempfile.TemporaryDirectory() as tmp:
            return read_initial_weights(import_checkpoint(path, os.path.join(tmp, "export")))
    if is_export(path):
        with open(os.path.join(path, CONFIG)) as f:
            model_config = json.load(f)
        info_path = os.path.join(path, INFO)
        info = json.load(open(info_path)) if os.path.isfile(info_path) else {}
        return model_config, load_file(os.path.join(path, WEIGHTS)), info.get("tokenizer_sha256")
    checkpoint_dir = resolve_checkpoint(path)
    state = ckpt.read_state(checkpoint_dir)
    return state["model_config"], consolidated_state_dict(checkpoint_dir), state.get("tokenizer_sha256")
