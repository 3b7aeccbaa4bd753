"""The lm-eval adapter: scores equal a direct computation, recurrent prefill shares contexts, and a
local YAML task over a local jsonl runs fully offline through simple_evaluate and recurlm-eval."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from recurlm.eval.lm_eval_adapter import RecurLMHarness, evaluate


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")


@pytest.fixture
def local_task(tmp_path):
    rows = [{"q": f"mqar: ab={i}{i}{i} cd=7{i}7 | ab=", "choices": [f"{i}{i}{i}", f"7{i}7", "000"], "gold": 0}
            for i in range(1, 5)]
    data = tmp_path / "recall.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tiny_recall.yaml").write_text(
        "task: tiny_recall\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n")
    return str(tmp_path)


def req(*args):
    return SimpleNamespace(args=args)


def direct_logprob(model, ids, n_cont):
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    logprobs = logits[0, :-1].log_softmax(-1)
    targets = torch.tensor(ids[1:])
    per_token = logprobs.gather(-1, targets[:, None])[:, 0]
    return float(per_token[-n_cont:].sum()), bool((logprobs.argmax(-1)[-n_cont:] == targets[-n_cont:]).all())


def test_loglikelihood_matches_a_direct_forward_and_shares_prefill(make_model, tokenizer, monkeypatch):
    model = make_model("hgrn2")
    harness = RecurLMHarness(model=model, tokenizer=tokenizer, batch_size=2, chunk_len=5)
    context = "mqar: ab=123 cd=456 | cd="
    requests = [req(context, c) for c in ("456", "123", "4")] + [req("sum mod 2: 1 1 =", " 0")]
    prefills = []
    import recurlm.eval.lm_eval_adapter as adapter

    original = adapter.prefill
    monkeypatch.setattr(adapter, "prefill", lambda *a, **k: prefills.append(a[1]) or original(*a, **k))
    results = harness.loglikelihood(requests)
    assert len(prefills) == 2  # one prefill per distinct context, not per request
    for (ctx, cont), (logprob, greedy) in zip([r.args for r in requests], results):
        ctx_ids, cont_ids = harness._encode_pair(ctx, cont)
        expected, expected_greedy = direct_logprob(model, ctx_ids + cont_ids, len(cont_ids))
        assert abs(logprob - expected) < 1e-3 and greedy == expected_greedy


def test_rolling_loglikelihood_and_generate_until(make_model, tokenizer):
    model = make_model("rwkv6")
    harness = RecurLMHarness(model=model, tokenizer=tokenizer, chunk_len=4)
    text = "mqar: ab=123 cd=456 | cd=456"
    ids = [tokenizer.bos_id] + tokenizer.encode(text)
    expected, _ = direct_logprob(model, ids, len(ids) - 1)
    assert abs(harness.loglikelihood_rolling([req(text)])[0] - expected) < 1e-3
    free = harness.generate_until([req("mqar:", {"until": [], "max_gen_toks": 12})])[0]
    stop = free[3:5]
    out = harness.generate_until([req("mqar:", {"until": [stop], "max_gen_toks": 12})])[0]
    assert stop not in out and free.startswith(out)


def test_local_yaml_task_offline(make_model, tokenizer, local_task):
    table = evaluate(make_model("hgrn2"), tokenizer, ["tiny_recall"], include_path=local_task)
    assert 0.0 <= table["tiny_recall"]["acc"] <= 1.0


def test_recurlm_eval_runs_an_lm_eval_task(export_dir, local_task, tmp_path):
    from recurlm.cli import eval_main as main

    out = tmp_path / "out"
    assert main([f"checkpoint={export_dir}", "tasks=[lm_eval:tiny_recall]", f"lm_eval_include_path={local_task}",
                 f"out_dir={out}", "wandb_mode=disabled"]) == 0
    doc = json.load(open(out / "results.json"))
    acc = [r for r in doc["results"] if r["task"] == "lm_eval:tiny_recall" and r["metric"] == "acc"]
    assert len(acc) == 1 and 0.0 <= acc[0]["value"] <= 1.0 and doc["step"] == 7


@pytest.mark.slow  # lm-eval's CLI indexes its ~14k built-in task YAMLs (~1-2 min on this machine)
def test_lm_eval_command_line_with_recurlm_registered(export_dir, local_task, tmp_path):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "recurlm.eval.lm_eval_adapter", "run", "--model", "recurlm",
                           "--model_args", f"pretrained={export_dir}", "--tasks", "tiny_recall",
                           "--include_path", local_task, "--output_path", str(tmp_path / "lm")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tiny_recall" in proc.stdout and "acc" in proc.stdout
