"""A thin SentencePiece wrapper and its trainer.

Fixed special ids: ``<unk>`` = 0, ``<s>`` (BOS) = 1, ``</s>`` (EOS) = 2, ``<pad>`` = 3. BOS, EOS
and PAD are control pieces: ``encode`` never emits them, the shard builder adds them around each
document. Normalisation is the identity (no NFKC, whitespace kept, no dummy prefix), so
``decode(encode(text)) == text`` for any valid text: code keeps its indentation and newlines.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import sentencepiece as spm

from recurlm.data.config import TokenizerConfig

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3


def file_sha256(path: str, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


class TokenizerError(ValueError):
    """Training a tokenizer failed for a reason in its config or corpus; the message names the key."""


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding every id of a vocabulary (uint16 up to 65536 pieces)."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32 token ids")


class Tokenizer:
    """A SentencePiece model loaded from ``path``."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer model {path!r} does not exist")
        self.path = os.path.abspath(path)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.load(self.path)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path}: not a SentencePiece model ({e})") from e
        self.sha256 = file_sha256(self.path)
        self.vocab_size: int = self.sp.get_piece_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()
        self.unk_id: int = self.sp.unk_id()
        missing = [n for n, i in (("BOS", self.bos_id), ("EOS", self.eos_id), ("PAD", self.pad_id)) if i < 0]
        if missing:
            raise ValueError(f"{path}: the SentencePiece model defines no {'/'.join(missing)} piece; "
                             "recurlm needs BOS, EOS and PAD (train it with recurlm-data tokenizer)")

    @property
    def dtype(self) -> np.dtype:
        """Token dtype of shards written with this tokenizer."""
        return token_dtype(self.vocab_size)

    def encode(self, text: str) -> list[int]:
        """Text -> piece ids (no BOS/EOS)."""
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Several texts at once (SentencePiece's C++ batch path)."""
        return self.sp.encode(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        """Piece ids -> text; control ids (BOS/EOS/PAD) decode to nothing."""
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def line_chunks(text: str, max_bytes: int) -> Iterator[str]:
    """Cut ``text`` into training sentences of at most ``max_bytes`` UTF-8 bytes on line
    boundaries, newlines kept (so pieces can span ``"\\n    "``); longer lines are cut."""
    buf: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if buf and size + n > max_bytes:
            yield "".join(buf)
            buf, size = [], 0
        while n > max_bytes:  # a single overlong line (minified code, data): hard cut
            head = line.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
            yield head
            line = line[len(head):]
            n = len(line.encode("utf-8"))
        buf.append(line)
        size += n
    if buf:
        yield "".join(buf)


def mixture_sample(sources: Mapping[str, Iterable[str]], weights: Mapping[str, float], total: int,
                   max_bytes: int, seed: int) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """A tokenizer training sample that follows a mixture rather than the sources' sizes.

    From each source's documents, cut into training sentences by ``line_chunks``, reservoir-samples
    round(weights[name] * total) sentences uniformly (its own seeded RNG, so the sample does not
    depend on the order of the sources); a source holding fewer gives all it has. Returns the
    sentences shuffled, and ``{name: (sampled, available)}``."""
    sample: list[str] = []
    counts = {}
    for name, texts in sources.items():
        quota = round(weights[name] * total)
        rng = random.Random(f"{seed}:{name}")
        reservoir: list[str] = []
        seen = 0
        for text in texts:
            for sentence in line_chunks(text, max_bytes):
                seen += 1
                if len(reservoir) < quota:
                    reservoir.append(sentence)
                elif (slot := rng.randrange(seen)) < quota:
                    reservoir[slot] = sentence
        sample += reservoir
        counts[name] = (len(reservoir), seen)
    random.Random(seed).shuffle(sample)
    return sample, counts


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, out_path: str) -> Tokenizer:
    """Train a SentencePiece model on ``texts`` (whole documents) and write it to ``out_path``
    atomically. ``cfg.input_sentence_size`` sentences are reservoir-sampled by SentencePiece."""
    n_sentences = 0

    def sentences() -> Iterator[str]:
        nonlocal n_sentences
        for text in texts:
            for chunk in line_chunks(text, cfg.max_sentence_bytes):
                n_sentences += 1
                yield chunk

    spm.set_random_generator_seed(cfg.seed)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    model = io.BytesIO()  # not model_prefix: the prefix would be recorded in the model and change its sha256
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(), model_writer=model,
            vocab_size=cfg.vocab_size, model_type=cfg.model_type,
            byte_fallback=cfg.byte_fallback, character_coverage=cfg.character_coverage,
            input_sentence_size=cfg.input_sentence_size, shuffle_input_sentence=True,
            max_sentence_length=4 * cfg.max_sentence_bytes + 16,
            user_defined_symbols=list(cfg.user_defined_symbols), split_digits=cfg.split_digits,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, allow_whitespace_only_pieces=True,
            unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
            num_threads=cfg.num_threads, minloglevel=2,
            hard_vocab_limit=True)
    except RuntimeError as e:
        if "Vocabulary size too high" in str(e) or "Vocabulary size is smaller than required_chars" in str(e):
            raise TokenizerError(f"SentencePiece training for {out_path} failed after {n_sentences} sentences: "
                                 f"data.tokenizer.vocab_size={cfg.vocab_size} does not fit this corpus ({e}). Lower "
                                 "data.tokenizer.vocab_size to the size SentencePiece names, or add text to the "
                                 "corpus.") from e
        raise TokenizerError(f"SentencePiece training for {out_path} failed after {n_sentences} sentences: {e}") from e
    with open(out_path + ".tmp", "wb") as f:
        f.write(model.getvalue())
    os.replace(out_path + ".tmp", out_path)
    return Tokenizer(out_path)
