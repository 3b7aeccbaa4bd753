"""recurlm-eval on a run trained with data=synthetic/mqar (in-process trainer): results, plots and
W&B in <run_dir>/eval/<step>/; recurlm-generate streams; bad arguments fail clearly."""
import json
import os
import re

import pytest

from recurlm.cli import eval_main
from recurlm.eval.cli import parse_args
from recurlm.eval.generate_cli import main as generate_main


def test_recurlm_eval_on_a_trained_run(trained_run, capsys):
    checkpoints = os.path.join(trained_run.run_dir, "checkpoints")
    code = eval_main([f"checkpoint={checkpoints}", "tasks=[ppl,ppl_by_position,mqar]", "eval.max_batches=2",
                      "length_multiple=4", "position_sequences=2", "mqar_pairs=[2,4]", "mqar_examples=2"])
    printed = capsys.readouterr().out
    assert code == 0
    out_dir = os.path.join(trained_run.run_dir, "eval", "3")
    doc = json.load(open(os.path.join(out_dir, "results.json")))
    assert doc["step"] == 3 and doc["train_seq_len"] == 32
    assert doc["checkpoint"] == os.path.join(checkpoints, "3")
    ppl = next(r for r in doc["results"] if r["task"] == "ppl" and r["metric"] == "loss")
    with open(os.path.join(trained_run.run_dir, "metrics.jsonl")) as f:
        val_loss = [json.loads(line)["val_loss"] for line in f if "val_loss" in line][-1]
    assert ppl["settings"]["seq_len"] == 32 and abs(ppl["value"] - val_loss) < 0.5  # same model, same split
    buckets = [r for r in doc["results"] if r["task"] == "ppl_by_position" and r["metric"] == "loss"]
    assert buckets[-1]["settings"]["to"] == 4 * 32
    assert sorted(doc["plots"]) == ["mqar", "ppl_by_position"]
    assert all(os.path.isfile(os.path.join(out_dir, p)) for p in doc["plots"].values())
    assert "| ppl | loss |" in printed and "results: " + os.path.join(out_dir, "results.json") in printed
    # W&B: the run's own id resumed, offline, in the run's wandb dir
    state = json.load(open(os.path.join(checkpoints, "3", "trainer_state.json")))
    runs = os.listdir(os.path.join(trained_run.run_dir, "wandb"))
    # offline-run-<time>-<id>; W&B appends -1, -2, ... when two runs start within the same second
    own = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(state['wandb_id'])}(-\d+)?")
    assert sum(bool(own.fullmatch(r)) for r in runs) >= 2


def test_recurlm_generate_streams_a_prompt_and_batches_prompts(trained_run, capsys):
    export = os.path.join(trained_run.run_dir, "checkpoints", "3")
    assert generate_main([f"checkpoint={export}", "prompt=mqar: ab=123 |", "max_new_tokens=6"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("mqar: ab=123 |") and "tokens/s" in captured.err
    assert generate_main([f"checkpoint={export}", 'prompts=["mqar: ab","sum mod 2: 1"]', "max_new_tokens=4",
                          "temperature=0.8", "top_k=5"]) == 0
    assert captured.out != (out := capsys.readouterr().out) and out.count("--- prompt:") == 2


def test_bad_arguments_fail_naming_the_problem(export_dir, capsys):
    with pytest.raises(ValueError, match="Valid keys"):
        parse_args(["checkpoint=x", "taks=[ppl]"])
    assert parse_args(["checkpoint=x", "tasks=[ppl,lm_eval:a]"]).eval.tasks == ["ppl", "lm_eval:a"]
    assert eval_main([f"checkpoint={export_dir}", "tasks=[nope]", "wandb_mode=disabled"]) == 2
    assert "unknown evaluation task 'nope'" in capsys.readouterr().err
    # an export without a run behind it has no validation split unless shards= is given
    assert eval_main([f"checkpoint={export_dir}", "tasks=[ppl]", "wandb_mode=disabled"]) == 2
    assert "shards=" in capsys.readouterr().err
