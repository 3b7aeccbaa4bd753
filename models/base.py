"""The language-model skeleton every family shares: embedding → residual blocks → norm → head.

A family contributes its blocks (token mixer + channel mixer, see :class:`Block`) and a few knobs
(embedding scale, logit soft-cap, norms). Modes:

- ``forward(input_ids, resets=None, state=None, return_state=False, labels=None)``: parallel
  (chunkwise) mode over [B, T] tokens, for training and prefill;
- ``step(token_ids, state)``: one token per sequence with O(1) state, for decoding.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from recurlm.models.config import ModelConfig
from recurlm.models.layers import Embedding, TruncNormalLinear, cross_entropy, linear_cross_entropy
from recurlm.models.state import EntryKind, LayerState, ModelState


class Block(nn.Module):
    """A residual block. Subclasses implement ``forward``, ``init_state`` and ``flops_per_token``,
    and declare in ``state_kinds`` the state entries that are not plain Gaussian content."""

    state_kinds: dict[str, EntryKind] = {}
    """Per state key, how a recipe may draw it at random (``recurlm.models.state``); keys left out
    follow ``entry_kind``'s defaults."""

    def forward(self, x: torch.Tensor, resets: Optional[torch.Tensor], state: Optional[LayerState],
                return_state: bool, **extra: Any) -> tuple[torch.Tensor, Optional[LayerState]]:
        """x: [B, T, D] → ([B, T, D], the layer's state after the last token if return_state)."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: Optional[LayerState], **extra: Any
             ) -> tuple[torch.Tensor, Optional[LayerState]]:
        """One token: x [B, D] → ([B, D], new state). The default runs ``forward`` on T = 1;
        families override it where a cheaper step exists."""
        y, state = self.forward(x[:, None], None, state, True, **extra)
        return y[:, 0], state

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> Optional[LayerState]:
        """The state before the first token (zeros, or learnt initial values), batch first."""
        raise NotImplementedError

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of this block at training length ``seq_len`` (matmuls, recurrence)."""
        raise NotImplementedError


class RecurrentLM(nn.Module):
    """Embedding, blocks, final norm and output head, with parallel and step modes."""

    def __init__(self, cfg: ModelConfig, blocks: Sequence[Block], final_norm: nn.Module,
                 embed_scale: float = 1.0, logit_softcap: Optional[float] = None):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (the trainer takes it from the tokenizer)")
        self.config = cfg
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, cfg.init_std)
        self.blocks = nn.ModuleList(blocks)
        self.norm = final_norm
        self.head = None if cfg.tie_embeddings else TruncNormalLinear(cfg.d_model, cfg.vocab_size, cfg.init_std)
        self.embed_scale = embed_scale
        self.logit_softcap = logit_softcap
        self.checkpoint_blocks: frozenset[int] = frozenset()
        """Indices of blocks whose activations are recomputed in backward (set by the trainer)."""

    # -- hooks for families ---------------------------------------------------------------------
    def block_extras(self) -> list[dict[str, Any]]:
        """Per-block keyword arguments computed once per call (e.g. HGRN2's forget-gate lower bounds)."""
        return [{} for _ in self.blocks]

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        return x * self.embed_scale if self.embed_scale != 1.0 else x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        logits = x @ self.embed.weight.t() if self.head is None else self.head(x)
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the logits of the last hidden states x [B, T, D] against labels [B, T]
        (-100 = ignore). A bias-free head goes through ``linear_cross_entropy``, which never holds the
        [B, T, V] logits."""
        head = self.embed if self.head is None else self.head
        if getattr(head, "bias", None) is not None:
            return cross_entropy(self.logits(x), labels)
        return linear_cross_entropy(self.norm(x), head.weight, labels, softcap=self.logit_softcap)

    # -- modes ----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, resets: Optional[torch.Tensor] = None,
                state: Optional[ModelState] = None, return_state: bool = False,
                labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[ModelState]]:
        """input_ids [B, T]; resets [B, T] bool (document starts); state from a previous window.

        Returns (logits [B, T, V], or the mean loss if ``labels`` [B, T] are given (-100 = ignore),
        and the final ModelState if ``return_state``)."""
        x = self.embed_tokens(input_ids)
        layer_states = state.layers if state is not None else [None] * len(self.blocks)
        new_states: list[Optional[LayerState]] = []
        for i, (block, extra) in enumerate(zip(self.blocks, self.block_extras())):
            if i in self.checkpoint_blocks and self.training and torch.is_grad_enabled():
                x, s = checkpoint(block, x, resets, layer_states[i], return_state, use_reentrant=False, **extra)
            else:
                x, s = block(x, resets, layer_states[i], return_state, **extra)
            new_states.append(s)
        out = self.logits(x) if labels is None else self.loss(x, labels)
        return out, (ModelState(new_states) if return_state else None)

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state: ModelState) -> tuple[torch.Tensor, ModelState]:
        """token_ids [B] → (logits [B, V], new state). O(1) in the number of tokens seen."""
        x = self.embed_tokens(token_ids)
        new_states = []
        for block, extra, layer_state in zip(self.blocks, self.block_extras(), state.layers):
            x, s = block.step(x, layer_state, **extra)
            new_states.append(s)
        return self.logits(x), ModelState(new_states)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> ModelState:
        device = device if device is not None else self.embed.weight.device
        return ModelState([block.init_state(batch_size, device) for block in self.blocks])

    def state_kinds(self) -> list[dict[str, EntryKind]]:
        """Per block, its declared state entry kinds (``Block.state_kinds``)."""
        return [block.state_kinds for block in self.blocks]

    # -- accounting -----------------------------------------------------------------------------
    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token (the trainer multiplies by 3 for forward + backward)."""
        head = 2 * self.config.d_model * self.config.vocab_size
        return head + sum(block.flops_per_token(seq_len) for block in self.blocks)

    def state_bytes(self) -> int:
        """Bytes of recurrent state per sequence (all layers), as held at decode time."""
        return self.init_state(1, device="meta").nbytes()

    def num_params(self, non_embedding: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.embed.weight.numel()
        return total

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: no weight decay on vectors (norms, biases, gates) or parameters tagged
        ``_no_weight_decay``; ``_lr_scale`` tags become per-group ``lr_scale`` multipliers."""
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for _, p in self.named_parameters():
            if not p.requires_grad:
                continue
            decay = 0.0 if (p.ndim < 2 or getattr(p, "_no_weight_decay", False)) else weight_decay
            key = (decay, float(getattr(p, "_lr_scale", 1.0)))
            groups.setdefault(key, []).append(p)
        return [{"params": ps, "weight_decay": wd, "lr_scale": scale} for (wd, scale), ps in groups.items()]
