"""Typed configuration of the data pipeline (the schema of Hydra's ``data`` config group).

Every field is an OmegaConf-compatible type so the dataclass can be registered in Hydra's
ConfigStore as-is. ``DataConfig()`` is the default run: the running interpreter's standard library
(``.py`` files, capped at ~12 MB), a 4096-piece BPE tokenizer, 1% of documents held out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

SOURCE_KINDS = ("stdlib", "text", "jsonl", "parquet", "hf_disk", "synthetic")
"""Source kinds understood by :mod:`recurlm.data.sources`."""

LOADER_MODES = ("packed", "documents_in_order")
"""Row layouts of :class:`recurlm.data.loader.PackedLoader` (``DataConfig.loader_mode``)."""


@dataclass
class SourceConfig:
    """One corpus of documents; several sources form a mixture."""

    name: str = "stdlib"
    """Name of the source: key of the mixture, name of its shard folder. Unique within a config."""

    kind: str = "stdlib"
    """Where documents come from. ``stdlib``: the ``.py`` files of the running interpreter's
    standard library (``sysconfig.get_paths()["stdlib"]``, site-packages excluded, sorted), one
    document per file. ``text``: text files (one document per file). ``jsonl``: ``.jsonl`` or
    ``.jsonl.zst`` files, one document per line (``text_field``). ``parquet``: parquet files, one
    document per row (``text_field``). ``hf_disk``: a ``datasets`` directory written by
    ``save_to_disk`` (``text_field``; the ``train`` split of a DatasetDict). ``synthetic``:
    generated task documents (``synthetic`` options, :mod:`recurlm.data.synthetic`)."""

    paths: List[str] = field(default_factory=list)
    """Files, directories (searched recursively for ``suffixes``) or glob patterns. Ignored for
    ``stdlib``. Matches are sorted so the document order is deterministic."""

    suffixes: List[str] = field(default_factory=lambda: [".py"])
    """File name endings collected when a path of a ``text`` or ``stdlib`` source is a directory
    (``jsonl``/``parquet`` directories use their own endings)."""

    text_field: str = "text"
    """Record field holding the document text (``jsonl``, ``parquet``, ``hf_disk``)."""

    max_bytes: Optional[int] = None
    """Stop reading the source once this many UTF-8 bytes of text were taken (None: no cap)."""

    max_docs: Optional[int] = None
    """Stop reading the source after this many documents (None: no cap)."""

    synthetic: Dict[str, Any] = field(default_factory=dict)
    """Options of a ``synthetic`` source: ``task`` (mqar, passkey, parity, modcount), ``num_docs``,
    ``seed`` and the task's parameters, a list meaning one value drawn per document
    (see ``recurlm.data.synthetic.make_example``). Ignored by other kinds."""

    weight: float = 1.0
    """Mixture weight: the share of every global training batch drawn from this source, and of the
    tokenizer's training sample (weights are normalised over the sources)."""

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"data.sources[{self.name}].kind={self.kind!r}: expected one of {SOURCE_KINDS}")
        if self.kind not in ("stdlib", "synthetic") and not self.paths:
            raise ValueError(f"data.sources[{self.name}]: kind {self.kind!r} needs 'paths'")
        if not self.weight > 0:
            raise ValueError(f"data.sources[{self.name}].weight={self.weight}: must be > 0")


@dataclass
class TokenizerConfig:
    """SentencePiece training settings. Pieces are trained on chunks of whole lines so that
    newlines and indentation become tokens; normalisation is the identity, so
    ``decode(encode(text)) == text`` for any UTF-8 text (byte fallback covers unseen chars)."""

    vocab_size: int = 4096
    """Number of pieces, special tokens and the 256 byte pieces included."""

    model_type: str = "bpe"
    """SentencePiece algorithm: ``bpe`` or ``unigram``."""

    byte_fallback: bool = True
    """Encode characters outside the vocabulary as UTF-8 byte pieces instead of ``<unk>``."""

    character_coverage: float = 0.9999
    """Share of characters (by frequency) that get their own piece; the rest fall back to bytes."""

    input_sentence_size: int = 200_000
    """Number of training sentences (line chunks) sampled from the corpus; 0 uses all. With several
    sources the sample follows their mixture weights (``weight * input_sentence_size`` sentences
    from each, fewer if a source has fewer); with 0, every sentence of every source whatever the weights."""

    max_sentence_bytes: int = 2048
    """Documents are cut into training sentences of at most this many bytes on line boundaries
    (longer single lines are cut at the limit)."""

    user_defined_symbols: List[str] = field(default_factory=list)
    """Extra pieces always kept whole (e.g. ``["<|im_start|>", "<|im_end|>"]``); they are matched
    in the text, unlike BOS/EOS/PAD which never come out of ``encode``."""

    split_digits: bool = True
    """Split numbers into single digits (keeps arithmetic regular)."""

    seed: int = 0
    """Seed of sentence sampling (SentencePiece is deterministic given its input and seed)."""

    num_threads: int = 2
    """Threads of the SentencePiece trainer."""

    def __post_init__(self) -> None:
        if self.model_type not in ("bpe", "unigram"):
            raise ValueError(f"data.tokenizer.model_type={self.model_type!r}: expected 'bpe' or 'unigram'")
        min_vocab = 4 + len(self.user_defined_symbols) + (256 if self.byte_fallback else 0)  # 4: <unk> BOS EOS PAD
        if self.vocab_size <= min_vocab:
            raise ValueError(f"data.tokenizer.vocab_size {self.vocab_size} is too small: specials and byte pieces "
                             f"alone take {min_vocab}")
        if self.vocab_size > 1 << 32:
            raise ValueError(f"data.tokenizer.vocab_size {self.vocab_size} does not fit in uint32 token ids")


def default_cache_dir() -> str:
    """``$RECURLM_CACHE`` if set, else ``~/.cache/recurlm/data``."""
    return os.environ.get("RECURLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "recurlm", "data")


@dataclass
class DataConfig:
    """Corpus, tokenizer, shards and loader settings of a training run."""

    sources: List[SourceConfig] = field(
        default_factory=lambda: [SourceConfig(name="stdlib", kind="stdlib", max_bytes=12_000_000)])
    """Corpora to train on; more than one is a mixture weighted by ``SourceConfig.weight``."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """How the SentencePiece tokenizer is trained (ignored when ``tokenizer_path`` is set)."""

    tokenizer_path: Optional[str] = None
    """Use this existing SentencePiece ``.model`` instead of training one. It must define BOS, EOS
    and PAD pieces."""

    valid_fraction: float = 0.01
    """Share of documents held out for validation, chosen by a hash of (``split_seed``, source
    name, document id): reproducible and independent of document order. Preparing fails with a
    clear error if a positive fraction selects no document of a source."""

    split_seed: int = 0
    """Salt of the validation hash (changing it draws another validation set)."""

    cache_dir: Optional[str] = None
    """Root of the tokenizer and shard cache; None means ``$RECURLM_CACHE`` or
    ``~/.cache/recurlm/data``. Entries are keyed by a hash of the inputs, so one cache serves
    every configuration."""

    num_workers: int = 2
    """Tokenizer worker processes (1 = tokenize in the main process). Workers are spawned, never
    forked: the trainer's process already runs threads when it builds data."""

    worker_timeout_s: float = 600.0
    """Longest wait for one batch (~1 MB of text) from a tokenizer worker; past it the build stops
    with an error naming the shard and the workers instead of hanging."""

    shard_tokens: int = 50_000_000
    """A shard is closed once its training split holds at least this many tokens (the validation
    split is cut at the same document). Shards are the unit of resumption."""

    verify_checksums: bool = True
    """When reusing cached shards, check every shard's checksums and token ids against the
    manifest before training starts. A shard that passed before and whose files kept their size
    and modification time is not read again (``verified.json`` beside the manifest), so a corpus
    is hashed once, not at every start; ``recurlm-data validate`` always reads everything."""

    loader_mode: str = "packed"
    """``packed``: documents shuffled per epoch, concatenated and cut into rows.
    ``documents_in_order``: every row of a batch is a lane that continues in the next step
    (state passing / truncated BPTT)."""

    loss_on_boundary: bool = True
    """Train on the label that crosses a document boundary (predicting the next document's BOS
    after an EOS). False sets those labels to the ignore index."""

    seed: int = 0
    """Seed of the document shuffle (the sample order depends only on it and the epoch)."""

    def resolved_cache_dir(self) -> str:
        """The cache directory after applying the default and ``$RECURLM_CACHE``."""
        return os.path.expanduser(self.cache_dir) if self.cache_dir else default_cache_dir()

    def mixture_weights(self) -> dict[str, float]:
        """Normalised ``{source name: weight}``."""
        total = sum(s.weight for s in self.sources)
        return {s.name: s.weight / total for s in self.sources}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the offending field when the config is inconsistent (run at
        construction; again by ``prepare``, as fields may be set after it). Each source and the
        tokenizer settings check their own fields when built."""
        if not self.sources:
            raise ValueError("data.sources is empty: give at least one source")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources: source names must be unique, got {names}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"data.valid_fraction={self.valid_fraction}: must be in [0, 1)")
        if self.loader_mode not in LOADER_MODES:
            raise ValueError(f"data.loader_mode={self.loader_mode!r}: expected one of {LOADER_MODES}")
        if self.num_workers < 1 or self.shard_tokens < 1:
            raise ValueError("data.num_workers and data.shard_tokens must be >= 1")
        if not self.worker_timeout_s > 0:
            raise ValueError(f"data.worker_timeout_s={self.worker_timeout_s}: must be > 0")


SCHEMAS = [("data", "data_schema", DataConfig)]
"""``(group, name, dataclass)`` stored in Hydra's ConfigStore by ``recurlm.configs``."""
