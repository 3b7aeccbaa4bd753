"""Scoring of the synthetic tasks: answer spans, and accuracy = 1 for an oracle, 0 for a corrupted
answer, on real tokenization; run_tasks over every task writes results JSON and plots."""
import json
import os

import torch

import recurlm.eval.synthetic_tasks as st
from recurlm.data.synthetic import examples, make_example
from recurlm.eval import EvalConfig, run_tasks
from recurlm.eval.results import SCHEMA


def test_answer_spans_decode_to_the_answers(tokenizer):
    for task, params in [("mqar", {"num_pairs": 6}), ("modcount", {"length": 9}), ("passkey", {"filler_repeats": 3})]:
        ex = make_example(task, 0, 1, params)
        ids, spans = st.encode_example(tokenizer, ex)
        assert ids[0] == tokenizer.bos_id and len(spans) == len(ex.answers)
        assert [tokenizer.decode(ids[s:e]).strip() for s, e in spans] == [a.strip() for a in ex.answers]


def oracle(corrupt_answer=None):
    """Predictions = the true next tokens (optionally one answer token wrong)."""
    def predict(model, ids, chunk_len):
        pred = torch.roll(ids, -1, dims=1)
        if corrupt_answer is not None:
            row, position = corrupt_answer
            pred[row, position - 1] = (pred[row, position - 1] + 1) % 300
        return pred
    return predict


def test_oracle_scores_one_and_a_wrong_token_fails_its_answer(tokenizer, monkeypatch, make_model):
    batch = examples("mqar", 0, 3, {"num_pairs": 5})
    model = make_model()
    monkeypatch.setattr(st, "chunked_argmax", oracle())
    assert st.answer_correct(model, tokenizer, batch, 8) == [[True] * 5] * 3
    _, spans = st.encode_example(tokenizer, batch[1])
    monkeypatch.setattr(st, "chunked_argmax", oracle(corrupt_answer=(1, spans[2][1] - 1)))
    flags = st.answer_correct(model, tokenizer, batch, 8)
    assert flags[1] == [True, True, False, True, True] and flags[0] == flags[2] == [True] * 5
    monkeypatch.setattr(st, "chunked_argmax", oracle())
    records, curve = st.mqar_eval(model, tokenizer, [2, 5], 3, 0, 2, 8)
    assert [r.value for r in records] == [1.0, 1.0, 1.0] and records[1].settings["queries"] == 15
    assert records[0].settings["state_bytes_per_pair"] == model.state_bytes() / 2


def test_mqar_eval_scores_values_of_the_requested_length(tokenizer, monkeypatch, make_model):
    """``value_digits`` reaches the examples: every scored answer is a 1-digit value, and a model that
    gets every answer's first token right but nothing else scores 1 at one digit, 0 at three."""
    seen = []
    real = st.answer_correct

    def spy(model, tok, batch, chunk_len):
        seen.extend(a for ex in batch for a in ex.answers)
        return real(model, tok, batch, chunk_len)

    def first_token_only(model, ids, chunk_len):
        """The true next token where the previous token is "=" (an answer's first token), else wrong."""
        pred = (torch.roll(ids, -1, dims=1) + 1) % 300
        equals = torch.tensor([tokenizer.decode([int(i)]).endswith("=") for i in ids.flatten()]).view_as(ids)
        return torch.where(equals, torch.roll(ids, -1, dims=1), pred)

    monkeypatch.setattr(st, "answer_correct", spy)
    monkeypatch.setattr(st, "chunked_argmax", first_token_only)
    model = make_model()
    one, _ = st.mqar_eval(model, tokenizer, [3], 2, 0, 2, 8, value_digits=1)
    assert seen and all(len(a) == 1 and a.isdigit() for a in seen)
    assert one[0].value == 1.0 and one[0].settings["value_digits"] == 1
    three, _ = st.mqar_eval(model, tokenizer, [3], 2, 0, 2, 8)
    assert three[0].value == 0.0 and three[0].settings["value_digits"] == 3


def test_random_model_is_near_chance_on_state_tracking(tokenizer, make_model):
    records, curve = st.state_tracking_eval(make_model("hawk"), tokenizer, ["parity"], [4, 8], 5, 16, 0, 8, 16)
    accs = [r.value for r in records if r.metric == "accuracy"]
    assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)
    assert curve["chance"]["parity"] == 0.5 and records[-1].summary


def test_run_tasks_writes_schema_plots_and_summary(tokenizer, synthetic_data, make_model, tmp_path):
    cfg = EvalConfig(tasks=["ppl", "ppl_by_position", "effrem", "passkey", "mqar", "state_tracking"], max_batches=1,
                     length_multiple=4, position_sequences=2, passkey_lengths=[64, 128], passkey_depths=[0.0, 1.0],
                     passkey_trials=1, mqar_pairs=[2, 4], mqar_examples=2, state_tracking_lengths=[4, 8],
                     state_tracking_examples=2, effrem_points=3)
    logged = {}
    model = make_model("hgrn2").train()
    result = run_tasks(model, tokenizer, synthetic_data, cfg, str(tmp_path), step=11, train_seq_len=16,
                       log=lambda metrics, step: logged.update(metrics, step=step))
    assert model.training  # mode restored
    doc = json.load(open(result["results_path"]))
    assert doc["schema"] == SCHEMA and doc["step"] == 11 and doc["train_seq_len"] == 16
    assert doc["model"]["state_bytes"] == model.state_bytes()
    assert {r["task"] for r in doc["results"]} == set(cfg.tasks)
    for r in doc["results"]:
        assert set(r) == {"task", "metric", "value", "settings", "summary", "step", "config_hash"}
        assert r["config_hash"] == doc["config_hash"] and isinstance(r["value"], float)
    assert set(doc["plots"]) == {"ppl_by_position", "effrem", "passkey", "mqar", "state_tracking"}
    for name in doc["plots"].values():
        assert open(os.path.join(tmp_path, name), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert logged["step"] == 11 and "eval/ppl/loss/seq_len=16/tokens=" in next(k for k in logged if "ppl/loss" in k)
    lines = result["summary"].splitlines()
    assert lines[2] == "| task | metric | value | setting |"
    assert sum(line.startswith("| ppl |") for line in lines) == 2
    other = run_tasks(model, tokenizer, synthetic_data, EvalConfig(tasks=["ppl"], max_batches=1), str(tmp_path / "b"),
                      step=11, train_seq_len=16)
    assert other["config_hash"] != result["config_hash"]
