"""Synthetic tasks as text: multi-query associative recall, passkey retrieval, parity, modular
counting and permutation composition (the S5 / A5 word problems of the state-tracking papers:
Merrill et al., 2024; Grazzi et al., 2025). The same generators make training documents (a ``synthetic`` data source) and
evaluation examples (``recurlm.eval``), so a small model trained with ``data=synthetic/mqar`` is
evaluated on exactly the format it learnt.

Why text and not a tokenizer-free integer vocabulary: a synthetic source then flows through the
ordinary pipeline (SentencePiece tokenizer, shards, loader, ``recurlm-train``, exports) unchanged,
and the evaluation tasks run on *any* checkpoint, whatever its tokenizer. Answers are scored per
answer span: every token overlapping the answer's characters must be the model's argmax.

An :class:`Example` is a list of segments ``(text, is_answer)``; its document text is their
concatenation. Example ``i`` of a generator with seed ``s`` is drawn from
``numpy.random.default_rng([s, i])``: deterministic and independent of how many are drawn.

Formats (``|`` separates the store from the queries; answers in brackets)::

    mqar:   "mqar: ab=417 kx=093 ... | kx=[093] ab=[417] ..."
    parity / modcount:
            "sum mod 2: 1 0 1 1 =[ 1]"       (the sum of the digits modulo m)
    s5 / a5 (word problem: the composition of random group elements, each written as its index
            in the group's element list ``group_elements``; identity = 0):
            "S5: 17 104 3 =[ 62]"
    passkey:
            "<intro> <filler...> The pass key is 68231. Remember it. 68231 is the pass key.
             <filler...> What is the pass key? The pass key is[ 68231]."
"""
from __future__ import annotations

import functools
import itertools
import string
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

TASKS = ("mqar", "passkey", "parity", "modcount", "s5", "a5")
"""Task names understood by :func:`make_example` (``parity`` is ``modcount`` with modulus 2)."""

GROUPS = {"s5": "S5", "a5": "A5"}
"""Permutation word-problem tasks and the group they compose in."""


@functools.lru_cache(maxsize=None)
def group_elements(task: str) -> tuple[tuple[int, ...], ...]:
    """The elements of S5 (all 120 permutations of 0..4, lexicographic: the identity first) or A5
    (the 60 even ones, same order), each as its one-line notation p = (p(0), ..., p(4))."""
    perms = list(itertools.permutations(range(5)))
    if task == "a5":
        perms = [p for p in perms if sum(p[i] > p[j] for i in range(5) for j in range(i + 1, 5)) % 2 == 0]
    return tuple(perms)


def compose(first: tuple[int, ...], then: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation "apply ``first``, then ``then``": i -> then(first(i))."""
    return tuple(then[i] for i in first)

KEYS = ["".join(p) for p in itertools.product(string.ascii_lowercase, repeat=2)]
"""MQAR keys: the 676 two-letter lowercase words."""

PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. "
                 "Find it and memorize it. I will quiz you about the important information there.")
PASSKEY_FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


@dataclass
class Example:
    """One synthetic sequence: text segments, the answers flagged."""

    segments: list[tuple[str, bool]]
    """``(text, is_answer)`` in order; the document is their concatenation."""

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.segments)

    @property
    def answers(self) -> list[str]:
        return [t for t, a in self.segments if a]


def mqar(rng: np.random.Generator, num_pairs: int, num_queries: int | None = None, value_digits: int = 3) -> Example:
    """``num_pairs`` distinct keys with random ``value_digits``-digit values, then
    ``num_queries`` (default: all pairs) of those keys in random order, each followed by its value."""
    if not 1 <= num_pairs <= len(KEYS):
        raise ValueError(f"mqar num_pairs={num_pairs}: must be in [1, {len(KEYS)}]")
    keys = [KEYS[i] for i in rng.choice(len(KEYS), size=num_pairs, replace=False)]
    values = ["".join(str(d) for d in rng.integers(0, 10, size=value_digits)) for _ in keys]
    store = " ".join(f"{k}={v}" for k, v in zip(keys, values))
    segments: list[tuple[str, bool]] = [(f"mqar: {store} |", False)]
    queries = rng.permutation(num_pairs)[: num_queries or num_pairs]
    for q in queries:
        segments += [(f" {keys[q]}=", False), (values[q], True)]
    return Example(segments)


def modcount(rng: np.random.Generator, length: int, modulus: int) -> Example:
    """``length`` random digits in [0, modulus) and their sum modulo ``modulus`` (parity for 2)."""
    digits = rng.integers(0, modulus, size=length)
    body = " ".join(str(int(d)) for d in digits)
    return Example([(f"sum mod {modulus}: {body} =", False), (f" {int(digits.sum()) % modulus}", True)])


def word_problem(rng: np.random.Generator, task: str, length: int) -> Example:
    """``length`` random elements of the task's group (indices into ``group_elements``) and the
    index of their composition g_1, then g_2, ..., then g_length."""
    elements = group_elements(task)
    index = {p: i for i, p in enumerate(elements)}
    picks = rng.integers(0, len(elements), size=length)
    product = elements[0]
    for i in picks:
        product = compose(product, elements[int(i)])
    body = " ".join(str(int(i)) for i in picks)
    return Example([(f"{GROUPS[task]}: {body} =", False), (f" {index[product]}", True)])


def passkey(rng: np.random.Generator, filler_repeats: int, depth: float, digits: int = 5) -> Example:
    """The passkey sentence at relative ``depth`` (0 = start, 1 = end) of ``filler_repeats``
    repetitions of the filler, then the question; the answer is the key."""
    key = str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))
    before = int(round(np.clip(depth, 0.0, 1.0) * filler_repeats))
    needle = f" The pass key is {key}. Remember it. {key} is the pass key."
    prompt = (PASSKEY_INTRO + PASSKEY_FILLER * before + needle + PASSKEY_FILLER * (filler_repeats - before)
              + " What is the pass key? The pass key is")
    return Example([(prompt, False), (f" {key}", True), (".", False)])


def _pick(rng: np.random.Generator, value: Any) -> Any:
    """A list of choices → one drawn uniformly; a scalar → itself."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, str)):
        return list(value)[int(rng.integers(0, len(value)))]
    return value


def make_example(task: str, seed: int, index: int, params: Mapping[str, Any]) -> Example:
    """Example ``index`` of ``task`` with seed ``seed``. Parameters given as lists are drawn per
    example (e.g. ``num_pairs: [4, 8, 16]``). Per task: ``mqar``: num_pairs (8), num_queries (all),
    value_digits (3); ``parity``: length (16); ``modcount``: length (16), modulus (5);
    ``s5`` / ``a5``: length (16); ``passkey``: filler_repeats (8), depth (uniform in [0, 1]),
    digits (5)."""
    rng = np.random.default_rng([int(seed), int(index)])
    p = {k: _pick(rng, v) for k, v in params.items()}
    if task == "mqar":
        return mqar(rng, int(p.get("num_pairs", 8)), p.get("num_queries"), int(p.get("value_digits", 3)))
    if task == "parity":
        return modcount(rng, int(p.get("length", 16)), 2)
    if task == "modcount":
        return modcount(rng, int(p.get("length", 16)), int(p.get("modulus", 5)))
    if task in GROUPS:
        return word_problem(rng, task, int(p.get("length", 16)))
    if task == "passkey":
        depth = p["depth"] if "depth" in p else float(rng.uniform())
        return passkey(rng, int(p.get("filler_repeats", 8)), float(depth), int(p.get("digits", 5)))
    raise ValueError(f"unknown synthetic task {task!r}; choose one of {TASKS}")


def plain_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options as plain dicts/lists (JSON-serialisable for the cache key)."""
    def plain(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)) or (hasattr(v, "__len__") and not isinstance(v, str)):
            return [plain(x) for x in v]
        return v

    return plain(options)


def iter_texts(options: Mapping[str, Any]) -> Iterator[tuple[int, str]]:
    """``(index, text)`` of the documents a ``synthetic`` source describes: ``task``, ``num_docs``
    (default 10000), ``seed`` (default 0) and the task's parameters (:func:`make_example`)."""
    options = plain_options(options)
    if "task" not in options:
        raise ValueError(f"a synthetic source needs 'task' (one of {TASKS}) in its 'synthetic' options")
    task = options.pop("task")
    num_docs = int(options.pop("num_docs", 10_000))
    seed = int(options.pop("seed", 0))
    for i in range(num_docs):
        yield i, make_example(task, seed, i, options).text


def examples(task: str, seed: int, count: int, params: Mapping[str, Any]) -> Sequence[Example]:
    """``count`` examples (evaluation uses seeds disjoint from training: pass another seed)."""
    return [make_example(task, seed, i, params) for i in range(count)]
