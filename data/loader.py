"""Batches for training and evaluation out of memory-mapped shards.

Stream. In epoch ``e`` the documents of a ShardSet are permuted by
``numpy.random.default_rng([seed, e, source tag])`` (identity for evaluation) and concatenated
into one token stream; every document is ``[BOS] + pieces + [EOS]``.

Packed mode. Row ``r`` of an epoch is ``stream[r*T : r*T + T + 1]`` (consecutive rows overlap by
one token, so every token but the first is a label exactly once); ``input_ids = row[:-1]``,
``labels = row[1:]``. An epoch has ``(num_tokens - 1) // T`` rows, the tail is dropped, and global
row ``k`` is row ``k % R`` of epoch ``k // R``: the loader is infinite and reshuffles every epoch.
Global batch ``g`` holds global rows ``[g*B, (g+1)*B)``; rank ``i`` of ``W`` takes the contiguous
slice ``[i*b, (i+1)*b)`` with ``b = B // W``. The sample order therefore depends only on (seed,
epoch), never on the world size.

Documents-in-order mode (state passing / TBPTT). The epoch stream is cut into ``B`` lanes of
``L = num_tokens // B`` tokens; at step ``n`` of an epoch lane ``j`` yields
``stream[j*L + n*T : j*L + n*T + T + 1]``, so row j of step n+1 continues row j of step n. The
first window of a lane in each epoch has ``resets[:, 0] = True`` (the carried state belongs to
another stream) even when it starts mid-document.

Resets and labels. ``resets[b, t]`` is True where input token t is a document's BOS (per
docs/dev-guide.md); a row that begins mid-document has ``resets[b, 0] = False`` (packed mode: no
state is carried between rows, so the trainer passes no initial state). The label that crosses a
boundary (the next document's BOS, predicted from an EOS) is ``IGNORE_INDEX`` when
``loss_on_boundary`` is False; padding (evaluation tail only) is always ``IGNORE_INDEX``.

Mixtures. With ``{name: ShardSet}`` each source has its own stream (its own epochs). Every global
row is assigned to the source with the largest quota deficit ``(n + 1) * w_s - taken_s`` (ties to
the earlier source), computed with exact fractions: every prefix of the row sequence is within one
row of its exact share, and a global batch with integral ``B * w_s`` has exactly ``B * w_s`` rows
of source s. In documents-in-order mode the lanes are assigned once, by the same rule over the first
batch.

State. ``state_dict()`` is global (the step and the rows taken per source), so ``load_state_dict``
resumes exactly, also under another world size (and, in packed mode, another batch size).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Mapping

import numpy as np
import torch

from recurlm.data.config import LOADER_MODES
from recurlm.data.shards import ShardSet

IGNORE_INDEX = -100
STATE_VERSION = 1


@dataclass
class Batch:
    """One rank's slice of a global batch.

    ``input_ids`` [b, T] int64, ``labels`` [b, T] int64 (``IGNORE_INDEX`` where there is no
    loss), ``resets`` [b, T] bool (True at each document start), ``position``: the loader state
    after this batch (what ``state_dict()`` returned right after producing it)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    resets: torch.Tensor
    position: dict

    @property
    def num_loss_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def pin_memory(self) -> "Batch":
        """The batch in page-locked host memory, so ``.to("cuda", non_blocking=True)`` copies it
        without stalling the host (the trainer's copies are non-blocking)."""
        return Batch(self.input_ids.pin_memory(), self.labels.pin_memory(), self.resets.pin_memory(),
                     self.position)


class _Stream:
    """The epoch token streams of one ShardSet and windows cut out of them."""

    def __init__(self, shards: ShardSet, seed: int, tag: str, shuffle: bool = True):
        if shards.num_docs == 0:
            raise ValueError(f"{shards}: no documents to load")
        self.shards, self.seed, self.shuffle = shards, seed, shuffle
        self.tag = zlib.crc32(tag.encode("utf-8"))
        self.num_tokens = shards.num_tokens
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(document order [D], stream end offset of each ordered document [D])."""
        if epoch not in self._epochs:
            n = self.shards.num_docs
            order = (np.random.default_rng([self.seed, epoch, self.tag]).permutation(n)
                     if self.shuffle else np.arange(n))
            ends = np.cumsum(self.shards.doc_lengths[order])
            if len(self._epochs) >= 2:  # a batch spans at most two epochs
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = (order, ends)
        return self._epochs[epoch]

    def window(self, epoch: int, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """``stream[start : start + length]`` of an epoch (shorter at the stream end) and a mask
        of the positions where a document begins."""
        order, ends = self._epoch(epoch)
        stop = min(start + length, self.num_tokens)
        tokens = np.empty(stop - start, dtype=np.int64)
        starts = np.zeros(stop - start, dtype=bool)
        d = int(np.searchsorted(ends, start, side="right"))
        pos = start
        while pos < stop:
            doc_end = int(ends[d])
            doc_start = doc_end - int(self.shards.doc_lengths[order[d]])
            take = min(doc_end, stop) - pos
            tokens[pos - start:pos - start + take] = self.shards.document(int(order[d]))[pos - doc_start:pos - doc_start + take]
            if pos == doc_start:
                starts[pos - start] = True
            pos += take
            d += 1
        return tokens, starts


def _quota_assign(weights: list[Fraction], taken: list[int], count: int) -> list[int]:
    """Source of each of the next ``count`` rows by the largest-deficit rule; updates ``taken``."""
    out = []
    for _ in range(count):
        n = sum(taken)
        s = max(range(len(weights)), key=lambda i: ((n + 1) * weights[i] - taken[i], -i))
        taken[s] += 1
        out.append(s)
    return out


def _rows_to_batch(rows: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int,
                   loss_on_boundary: bool, position: dict) -> Batch:
    """Windows of up to T+1 tokens (with document-start masks) -> a padded Batch."""
    b = len(rows)
    ids = np.full((b, seq_len + 1), pad_id, dtype=np.int64)
    starts = np.zeros((b, seq_len + 1), dtype=bool)
    valid = np.zeros((b, seq_len + 1), dtype=bool)
    for i, (tok, st) in enumerate(rows):
        ids[i, :len(tok)], starts[i, :len(st)], valid[i, :len(tok)] = tok, st, True
    labels = ids[:, 1:].copy()
    no_loss = ~valid[:, 1:]
    if not loss_on_boundary:
        no_loss |= starts[:, 1:]
    labels[no_loss] = IGNORE_INDEX
    return Batch(torch.from_numpy(ids[:, :-1].copy()), torch.from_numpy(labels),
                 torch.from_numpy(starts[:, :-1].copy()), position)


class PackedLoader:
    """Infinite, deterministic, resumable iterator of :class:`Batch` (see the module docstring).

    Args:
        shards: a ShardSet, or ``{name: ShardSet}`` for a mixture.
        seq_len: T, tokens per row.
        global_batch_size: B, rows per step over all ranks (divisible by ``world_size``).
        rank, world_size: this process's slice of every global batch.
        seed: shuffle seed.
        mode: ``"packed"`` or ``"documents_in_order"``.
        loss_on_boundary: keep the label that crosses a document boundary.
        mixture_weights: ``{name: weight}`` for a mixture (normalised); default equal weights.
        shuffle: permute documents per epoch (False: shard order in every epoch).
    """

    def __init__(self, shards: ShardSet | Mapping[str, ShardSet], seq_len: int, global_batch_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, mode: str = "packed",
                 loss_on_boundary: bool = True, mixture_weights: Mapping[str, float] | None = None,
                 shuffle: bool = True):
        if mode not in LOADER_MODES:
            raise ValueError(f"mode must be one of {LOADER_MODES}, got {mode!r}")
        if seq_len < 1 or global_batch_size < 1:
            raise ValueError(f"seq_len ({seq_len}) and global_batch_size ({global_batch_size}) must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size or global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} must split evenly over world_size "
                             f"{world_size} (rank {rank})")
        sets = dict(shards) if isinstance(shards, Mapping) else {"default": shards}
        if not sets:
            raise ValueError("PackedLoader needs at least one ShardSet")
        weights = dict(mixture_weights) if mixture_weights is not None else {n: 1.0 for n in sets}
        if set(weights) != set(sets) or any(not w > 0 for w in weights.values()):
            raise ValueError(f"mixture_weights {weights} must give a positive weight to each of {sorted(sets)}")
        if len({s.tokenizer_sha256 for s in sets.values()}) != 1:
            raise ValueError(f"mixture sources were tokenized with different tokenizers: {sorted(sets)}")
        self.names = list(sets)
        self.streams = [_Stream(sets[n], seed, n, shuffle) for n in self.names]
        total = sum(Fraction(weights[n]).limit_denominator(1_000_000) for n in self.names)
        self.weights = [Fraction(weights[n]).limit_denominator(1_000_000) / total for n in self.names]
        self.seq_len, self.global_batch_size = seq_len, global_batch_size
        self.rank, self.world_size, self.local_batch_size = rank, world_size, global_batch_size // world_size
        self.seed, self.mode, self.loss_on_boundary, self.shuffle = seed, mode, loss_on_boundary, shuffle
        self.pad_id = next(iter(sets.values())).pad_id
        self.step = 0
        self.taken = [0] * len(self.names)  # rows taken from each source so far
        if mode == "packed":
            self.rows_per_epoch = [(s.num_tokens - 1) // seq_len for s in self.streams]
            for name, r, s in zip(self.names, self.rows_per_epoch, self.streams):
                if r < 1:
                    raise ValueError(f"source {name!r}: {s.num_tokens} tokens cannot fill one row of seq_len {seq_len}")
        else:
            self.lane_source = _quota_assign(self.weights, [0] * len(self.names), global_batch_size)
            self.lanes = [0] * len(self.names)  # lanes per source
            self.lane_index = []  # lane j is lane number lane_index[j] of its source
            for s in self.lane_source:
                self.lane_index.append(self.lanes[s])
                self.lanes[s] += 1
            self.lane_len = [s.num_tokens // max(n, 1) for s, n in zip(self.streams, self.lanes)]
            self.steps_per_epoch = [(length - 1) // seq_len for length in self.lane_len]
            for name, n, steps in zip(self.names, self.lanes, self.steps_per_epoch):
                if n and steps < 1:
                    raise ValueError(f"source {name!r}: too few tokens for {n} lanes of seq_len {seq_len}")

    def __iter__(self) -> "PackedLoader":
        return self

    def _packed_rows(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if len(self.names) > 1:
            sources = _quota_assign(self.weights, self.taken, self.global_batch_size)
        else:
            sources = [0] * self.global_batch_size
            self.taken[0] += self.global_batch_size
        # number each row within its source's infinite row sequence
        next_row = [t - sources.count(i) for i, t in enumerate(self.taken)]
        row_ids = []
        for s in sources:
            row_ids.append(next_row[s])
            next_row[s] += 1
        lo = self.rank * self.local_batch_size
        rows = []
        for s, k in zip(sources[lo:lo + self.local_batch_size], row_ids[lo:lo + self.local_batch_size]):
            epoch, r = divmod(k, self.rows_per_epoch[s])
            rows.append(self.streams[s].window(epoch, r * self.seq_len, self.seq_len + 1))
        return rows

    def _lane_rows(self) -> list[tuple[np.ndarray, np.ndarray]]:
        rows = []
        lo = self.rank * self.local_batch_size
        for j in range(lo, lo + self.local_batch_size):
            s, lane = self.lane_source[j], self.lane_index[j]
            epoch, n = divmod(self.step, self.steps_per_epoch[s])
            tokens, starts = self.streams[s].window(epoch, lane * self.lane_len[s] + n * self.seq_len,
                                                    self.seq_len + 1)
            if n == 0:
                starts = starts.copy()
                starts[0] = True
            rows.append((tokens, starts))
        for s, n in enumerate(self.lanes):
            self.taken[s] += n
        return rows

    def __next__(self) -> Batch:
        rows = self._packed_rows() if self.mode == "packed" else self._lane_rows()
        self.step += 1
        batch = _rows_to_batch(rows, self.seq_len, self.pad_id, self.loss_on_boundary, self.state_dict())
        return batch.pin_memory() if torch.cuda.is_available() else batch

    def state_dict(self) -> dict:
        """Global position: identical on every rank, valid for any world size."""
        return {"version": STATE_VERSION, "mode": self.mode, "seed": self.seed, "seq_len": self.seq_len,
                "global_batch_size": self.global_batch_size, "shuffle": self.shuffle, "step": self.step,
                "rows_taken": dict(zip(self.names, self.taken))}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue exactly after the batch whose ``position`` (or ``state_dict()``) is ``state``."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}, expected {STATE_VERSION}")
        fixed = ["mode", "seed", "seq_len", "shuffle"] + (["global_batch_size"] if self.mode != "packed" else [])
        for key in fixed:
            if state[key] != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has "
                                 f"{getattr(self, key)!r}: cannot resume")
        if set(state["rows_taken"]) != set(self.names):
            raise ValueError(f"loader state covers sources {sorted(state['rows_taken'])}, loader has {self.names}")
        self.step = int(state["step"])
        self.taken = [int(state["rows_taken"][n]) for n in self.names]


def iter_eval_batches(shards: ShardSet, seq_len: int, batch_size: int, max_batches: int | None = None,
                      loss_on_boundary: bool = True) -> Iterator[Batch]:
    """Deterministic validation batches: documents in shard order, packed into rows of stride T
    (like training), the last row padded (``IGNORE_INDEX`` labels) and the last batch possibly
    smaller. Identical on every rank; stops after ``max_batches`` (None: one pass)."""
    stream = _Stream(shards, seed=0, tag="eval", shuffle=False)
    n_rows = max(1, -(-(stream.num_tokens - 1) // seq_len))
    n_batches = -(-n_rows // batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for g in range(n_batches):
        rows = [stream.window(0, r * seq_len, seq_len + 1)
                for r in range(g * batch_size, min((g + 1) * batch_size, n_rows))]
        yield _rows_to_batch(rows, seq_len, shards.pad_id, loss_on_boundary, {"eval_batch": g + 1})
