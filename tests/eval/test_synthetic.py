"""Synthetic task generators: deterministic, answers consistent with their prompts, and usable as a
``synthetic`` data source through the ordinary pipeline."""
import re

import pytest

from recurlm.data import DataConfig, SourceConfig, TokenizerConfig
from recurlm.data.sources import fingerprint, iter_documents
from recurlm.data.synthetic import examples, make_example


def test_examples_are_deterministic_per_seed_and_index():
    a = examples("mqar", 3, 4, {"num_pairs": 8})
    assert [e.text for e in a] == [e.text for e in examples("mqar", 3, 4, {"num_pairs": 8})]
    assert a[2].text == make_example("mqar", 3, 2, {"num_pairs": 8}).text  # independent of count
    assert a[0].text != examples("mqar", 4, 1, {"num_pairs": 8})[0].text


def test_mqar_answers_are_the_stored_values():
    ex = make_example("mqar", 0, 5, {"num_pairs": 12})
    store = dict(re.findall(r"([a-z]{2})=(\d{3})", ex.segments[0][0]))
    assert len(store) == 12
    queries = [s.strip(" =") for s, answer in ex.segments[1:] if not answer]
    assert sorted(queries) == sorted(store)
    assert ex.answers == [store[q] for q in queries]


@pytest.mark.parametrize("task,modulus", [("parity", 2), ("modcount", 5), ("modcount", 7)])
def test_state_tracking_answer_is_the_sum_modulo(task, modulus):
    for ex in examples(task, 1, 20, {"length": 11, "modulus": modulus}):
        prompt, answer = ex.segments[0][0], ex.answers[0]
        assert prompt.startswith(f"sum mod {modulus}:")
        digits = [int(d) for d in prompt.split(":")[1].strip(" =").split()]
        assert len(digits) == 11 and all(0 <= d < modulus for d in digits)
        assert int(answer) == sum(digits) % modulus


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_hides_the_answer_at_the_depth(depth):
    ex = make_example("passkey", 0, 0, {"filler_repeats": 10, "depth": depth})
    key = ex.answers[0].strip()
    prompt = ex.segments[0][0]
    assert len(key) == 5 and prompt.count(key) == 2
    relative = prompt.index(f"The pass key is {key}") / len(prompt)
    assert abs(relative - depth) < 0.15


def test_synthetic_source_documents_and_cache_key():
    src = SourceConfig(name="p", kind="synthetic", synthetic={"task": "parity", "num_docs": 7, "length": [3, 5]})
    docs = list(iter_documents(src))
    assert len(docs) == 7 and docs[0].doc_id == "p:0"
    assert all(d.text.startswith("sum mod 2:") for d in docs)
    assert {len(d.text.split(":")[1].split()) - 2 for d in docs} <= {3, 5}  # digits + "=" + answer
    other = SourceConfig(name="p", kind="synthetic", synthetic={"task": "parity", "num_docs": 7, "seed": 1})
    assert fingerprint(src) != fingerprint(other)
    DataConfig(sources=[src], tokenizer=TokenizerConfig(vocab_size=300)).validate()  # no paths needed


def test_prepared_synthetic_data_round_trips(synthetic_data):
    tok = synthetic_data.tokenizer
    doc = synthetic_data.valid.document(0)
    assert doc[0] == tok.bos_id and doc[-1] == tok.eos_id
    assert tok.decode(doc[1:-1]).startswith("mqar: ")
