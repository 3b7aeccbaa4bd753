"""Training recipes: what a phase does beyond plain next-token prediction from zero states.

A recipe decides, for every micro-batch, the *initial* recurrent state the model starts from and
whether the *final* state must be returned to it afterwards. ``recipe=none`` (and
``state_expansion``, plain training from other weights) builds no recipe object: every micro-batch
starts from the zero state and the trainer calls nothing here. Otherwise ``Trainer.train_step`` asks::

    recipe.begin_step(step, model, fitting_pass)           # once per step (Fitted Noise refits here)
    state, resets = recipe.initial_state(micro, resets)   # before the forward
    loss, final = engine(ids, resets=resets, state=state, return_state=recipe.wants_final_state, ...)
    recipe.observe(micro, final)                                  # after the backward

Recipes (``recipe=<option>``, configs/recipe/). The four length-generalisation interventions carry
the names of Buitrago Ruiz & Gu (2025), "Understanding and Improving Length Generalization in
Recurrent Models", arXiv 2507.02782, its section on training interventions):

- ``none``: zero states (plain pretraining).
- ``length_gen/random_noise``: Random Noise. Content entries of the initial state drawn at random
  (standard deviation ``noise_scale``) as each family declares them (``recurlm.train.state_noise``:
  Gaussian for linear states, log-normal for sLSTM's normaliser, around the learnt initial memory
  for Titans, conv / token-shift buffers and attention caches from a real final state).
- ``length_gen/fitted_noise``: Fitted Noise. As Random Noise, but each entry is drawn from the mean
  and standard deviation (per layer, key and head) of the final states the current model reaches
  over ``fit_batches`` training batches from its initial state; refitted every ``refit_every`` steps.
  The statistics are saved with the checkpoint.
- ``length_gen/state_passing``: State Passing (the paper's SP). The initial state of row i is the
  final state (detached) of a *different* row of the previous step (a random derangement of the
  rows): a state that real text produced, but not this row's history.
- ``length_gen/tbtt``: truncated backpropagation through time. With
  ``data.loader_mode=documents_in_order`` row i of step n+1 continues row i of step n; the final
  state of row i (detached) initialises it. ``resets`` are left alone, so a row starting a new
  document (or a new epoch of its lane) still drops the carried state.
- ``state_expansion``: plain training started from an expanded export (``init_from``) with a
  re-warmed learning-rate schedule (StateX, Shen et al. 2025).

The retired names ``length_gen/noise_init`` and ``length_gen/other_sequence_init`` fail at
composition with a message naming their successors; ``state_passing`` with the documents-in-order
loader (the old meaning, TBTT) fails with a message naming ``length_gen/tbtt``.

The injecting recipes (noise, SP) clear ``resets[:, 0]``: a row that starts at a document start
would otherwise discard the injected state at its first token. Entries a family declares ``real``
(bookkeeping: positions, cache validity, stabilisers; buffers of recent tokens) are never drawn
at random: they come from a real final state of the previous step, so the model sees a consistent
"this row continues something" state (e.g. Griffin's ``_pos`` > 0, which keeps the RG-LRU state
at the first token). The first step of a process has no previous final state: it runs from zeros.

Checkpoints: ``Recipe.state_dict()`` (the carried states of this rank, and the noise / permutation
generator) is saved per rank with every checkpoint and restored on resume, so a resumed run
continues exactly (``recurlm.train.checkpoint``). A rollback after a non-finite loss drops them.

Fitted Noise fits on each rank's own rows (its statistics are per rank, saved per rank). The noise
recipes read the model's initial state (``model.init_state``: Titans' learnt initial memory), which
needs whole parameters: not supported under ZeRO-3, where a rank holds a partition.

Rows and ranks: every rank keeps the states of its own rows, per micro-batch index. The
documents-in-order loader gives each rank the same lanes at every step, and the trainer cuts
micro-batches at the same rows every step, so micro-batch i of step n+1 holds the continuations
of micro-batch i of step n whatever the world size or gradient accumulation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch

from recurlm.models.base import RecurrentLM
from recurlm.models.state import ModelState
from recurlm.train.state_noise import (Statistics, draw_state, fit_statistics, statistics_from_dict,
                                       statistics_to_dict)

RECIPES = ("none", "random_noise", "fitted_noise", "state_passing", "tbtt", "state_expansion")

RETIRED = {
    "noise_init": "renamed length_gen/random_noise (Random Noise; noise now follows each state entry's kind, "
                  "and length_gen/fitted_noise draws from fitted statistics)",
    "other_sequence_init": "renamed length_gen/state_passing (the paper's State Passing: the final state of "
                           "another sequence of the previous step)",
}
"""Recipe names that no longer exist, and what to use instead."""


def retired_recipe_message(overrides) -> Optional[str]:
    """The error for a ``recipe=length_gen/<retired>`` or ``recipe.name=<retired>`` override, if any."""
    for override in overrides:
        key, _, value = str(override).lstrip("+~").partition("=")
        name = value.rsplit("/", 1)[-1]
        if key in ("recipe", "recipe.name") and name in RETIRED:
            return f"{override}: recipe {name!r} was {RETIRED[name]}"
    return None


@dataclass
class RecipeConfig:
    name: str = "none"
    """none, random_noise, fitted_noise, state_passing, tbtt or state_expansion (module docstring)."""
    init_from: Optional[str] = None
    """Start from these weights (a checkpoint, run dir, export dir, or a checkpoint of another project
    that ``recurlm-convert import`` reads, converted on the fly) instead of a fresh init;
    optimizer, schedule and data position start anew (a post-training phase). Ignored when the run
    resumes from its own checkpoint."""
    model_from_init: bool = True
    """With ``init_from``: take the model config from it (an expanded export brings its larger
    state); False: keep ``model`` and require identical parameter shapes."""
    noise_scale: float = 1.0
    """random_noise: standard deviation of the noise (Gaussian entries; log-space for positive ones;
    relative to the spread of the initial value for Titans' memory)."""
    refit_every: int = 100
    """fitted_noise: refit the statistics every this many steps (0: fit once, at the phase's first step)."""
    fit_batches: int = 4
    """fitted_noise: global batches of training data (from the start of the training stream, run
    from the model's initial state) whose final states the statistics are fitted on."""
    post_train_ratio: float = 0.0
    """state_expansion: set ``train.steps`` so the phase sees this fraction of the tokens ``init_from``
    was trained on (StateX post-trains 10B tokens after the base models' 100B: 0.1); 0: keep
    ``train.steps``. Needs a token count in ``init_from`` (checkpoints and exports record it)."""
    seed: int = 0
    """random_noise / fitted_noise / state_passing: seed of the noise and of the row permutations
    (mixed with the rank, so ranks draw differently)."""

    def __post_init__(self) -> None:
        if self.name in RETIRED:
            raise ValueError(f"recipe.name={self.name!r} was {RETIRED[self.name]}")
        if self.name not in RECIPES:
            raise ValueError(f"recipe.name={self.name!r}: expected one of {RECIPES}")
        if not self.noise_scale >= 0:
            raise ValueError(f"recipe.noise_scale={self.noise_scale}: must be >= 0")
        if self.refit_every < 0 or self.fit_batches < 1:
            raise ValueError(f"recipe.refit_every={self.refit_every} must be >= 0 and recipe.fit_batches="
                             f"{self.fit_batches} >= 1")


SCHEMAS = [("recipe", "recipe_schema", RecipeConfig)]
"""``(group, name, dataclass)`` stored in Hydra's ConfigStore by ``recurlm.configs``."""


FinalStates = Callable[[int], Iterator[ModelState]]
"""``final_states(batches)``: the final states the current model reaches from its initial state on
that many training batches (the trainer's ``fitting_pass``)."""


class Recipe:
    """What a recipe may do at each call; the defaults do nothing (no initial state, no final state
    wanted). Plain training builds no recipe at all (``build_recipe`` returns None)."""

    wants_final_state = False

    def begin_step(self, step: int, model: RecurrentLM, final_states: FinalStates) -> None:
        """Called before every training step with the model being trained."""

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


class TBTT(_Carrying):
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


class StatePassing(_FromPreviousStep):
    """Row i starts from the final state of row p(i) != i of the previous step (random derangement)."""

    def inject(self, previous):
        b = previous.batch_size
        order = torch.randperm(b, generator=self.generator)
        source = torch.empty(b, dtype=torch.long)
        source[order] = order.roll(-1)  # a random cycle through all rows: nobody gets its own state
        return previous.select(source)


class RandomNoise(_FromPreviousStep):
    """Content drawn per entry kind (``recurlm.train.state_noise``); ``real`` entries from the
    previous step's final state of the same rows."""

    def __init__(self, scale: float, seed: int, rank: int):
        super().__init__(seed, rank)
        self.scale = scale
        self.model: Optional[RecurrentLM] = None

    def begin_step(self, step, model, final_states):
        self.model = model

    def statistics(self) -> Optional[Statistics]:
        return None

    def inject(self, previous):
        if self.model is None:
            raise RuntimeError("a noise recipe needs begin_step(step, model, ...) before its first initial_state")
        with torch.no_grad():
            init = self.model.init_state(1)
        return draw_state(self.model.state_kinds(), previous, init, self.generator, self.scale, self.statistics())


class FittedNoise(RandomNoise):
    """Random noise drawn from statistics of the current model's final states (refitted every
    ``refit_every`` steps; saved with the checkpoint, so a resumed run draws the same noise)."""

    def __init__(self, refit_every: int, fit_batches: int, seed: int, rank: int):
        super().__init__(1.0, seed, rank)
        self.refit_every, self.fit_batches = refit_every, fit_batches
        self.stats: Optional[Statistics] = None
        self.fitted_at: Optional[int] = None

    def begin_step(self, step, model, final_states):
        super().begin_step(step, model, final_states)
        due = self.stats is None or (self.refit_every > 0 and step % self.refit_every == 0 and step != self.fitted_at)
        if due:
            with torch.no_grad():
                init = model.init_state(1)
            self.stats = fit_statistics(model.state_kinds(), final_states(self.fit_batches), init)
            self.fitted_at = step

    def statistics(self):
        return self.stats

    def state_dict(self):
        return {**super().state_dict(), "statistics": statistics_to_dict(self.stats),
                "fitted_at": -1 if self.fitted_at is None else self.fitted_at}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.stats = statistics_from_dict(state.get("statistics", {}))
        fitted_at = state.get("fitted_at", -1)
        self.fitted_at = None if fitted_at < 0 else fitted_at


def build_recipe(cfg: RecipeConfig, loader_mode: str, rank: int = 0) -> Optional[Recipe]:
    """The recipe object of ``cfg`` (checks the data settings it relies on; ``RecipeConfig`` checked
    its own fields); None for plain training from zero states (``none``, ``state_expansion``)."""
    if cfg.name == "tbtt":
        if loader_mode != "documents_in_order":
            raise ValueError("recipe tbtt needs data.loader_mode=documents_in_order (row i of a step "
                             "must continue row i of the previous step)")
        return TBTT()
    if cfg.name == "state_passing":
        if loader_mode == "documents_in_order":
            raise ValueError("recipe state_passing is the paper's State Passing (the final state of *another* "
                             "sequence); it used to mean carrying each row's own state across consecutive windows, "
                             "which is now recipe=length_gen/tbtt. Use that, or data.loader_mode=packed for SP")
        return StatePassing(cfg.seed, rank)
    if cfg.name == "random_noise":
        return RandomNoise(cfg.noise_scale, cfg.seed, rank)
    if cfg.name == "fitted_noise":
        return FittedNoise(cfg.refit_every, cfg.fit_batches, cfg.seed, rank)
    if cfg.name == "state_expansion" and not cfg.init_from:
        raise ValueError("recipe state_expansion continues training an expanded model: set recipe.init_from "
                         "to the output of `recurlm-convert expand-state`")
    return None


def post_training_steps(cfg: RecipeConfig, tokens_per_step: int) -> Optional[int]:
    """``train.steps`` of a phase with ``cfg.post_train_ratio`` (None: the ratio is off)."""
    if cfg.post_train_ratio <= 0:
        return None
    if not cfg.init_from:
        raise ValueError("recipe.post_train_ratio needs recipe.init_from (the model whose training tokens it scales)")
    tokens = pretraining_tokens(cfg.init_from)
    if not tokens:
        raise ValueError(f"recipe.post_train_ratio={cfg.post_train_ratio}: {cfg.init_from} records no training token "
                         f"count; set recipe.post_train_ratio=0 and train.steps instead")
    return max(1, round(cfg.post_train_ratio * tokens / tokens_per_step))


def pretraining_tokens(path: str) -> Optional[int]:
    """Training tokens recorded by ``init_from`` (an export's info, or a checkpoint's state)."""
    import json
    import os

    from recurlm.models.pretrained import INFO, is_export
    from recurlm.train import checkpoint as ckpt
    from recurlm.models.checkpoint_files import resolve_checkpoint

    if is_export(path):
        info_path = os.path.join(path, INFO)
        return json.load(open(info_path)).get("tokens") if os.path.isfile(info_path) else None
    return ckpt.read_state(resolve_checkpoint(path)).get("tokens")


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
    from recurlm.models.checkpoint_files import consolidated_state_dict, resolve_checkpoint

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
