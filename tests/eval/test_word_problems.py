"""S5 / A5 permutation word problems: the groups, answers that are the composition of the prompt's
elements, the data source, and the state_tracking evaluation from recurlm-eval."""
import json
import os

import numpy as np
import pytest

from recurlm.data.synthetic import compose, examples, group_elements
from recurlm.cli import eval_main
from recurlm.eval.synthetic_tasks import state_tracking_eval


def matrix(p):
    """Permutation matrix sending basis vector i to p(i)."""
    m = np.zeros((5, 5), dtype=int)
    m[list(p), range(5)] = 1
    return m


def test_groups_have_their_orders_identity_first_and_a5_is_closed():
    s5, a5 = group_elements("s5"), group_elements("a5")
    assert len(s5) == 120 and len(set(s5)) == 120 and s5[0] == (0, 1, 2, 3, 4)
    assert len(a5) == 60 and set(a5) < set(s5) and a5[0] == s5[0]
    assert all(compose(p, q) in set(a5) for p in a5[:12] for q in a5[:12])
    assert any(compose(p, q) not in set(a5) for p in s5 for q in s5[1:3] if q not in set(a5))


@pytest.mark.parametrize("task", ["s5", "a5"])
def test_answer_is_the_composition_of_the_prompt(task):
    elements = group_elements(task)
    for ex in examples(task, 2, 20, {"length": 9}):
        prompt, answer = ex.segments[0][0], ex.answers[0]
        assert prompt.startswith(f"{task.upper()}:")
        picks = [int(i) for i in prompt.split(":")[1].strip(" =").split()]
        assert len(picks) == 9 and all(0 <= i < len(elements) for i in picks)
        product = np.eye(5, dtype=int)
        for i in picks:  # first g_1, then g_2, ...: the matrix of g_n ... g_1
            product = matrix(elements[i]) @ product
        assert (matrix(elements[int(answer)]) == product).all()


def test_state_tracking_eval_scores_word_problems_at_chance_for_a_random_model(tokenizer, make_model):
    records, curve = state_tracking_eval(make_model("rwkv7"), tokenizer, ["s5", "a5"], [2, 4], 5, 4, 0, 4, 32)
    assert curve["chance"] == {"s5": 1 / 120, "a5": 1 / 60}
    assert all(0 <= a <= 1 for accs in curve["tasks"].values() for a in accs)
    with pytest.raises(ValueError, match="s5"):
        state_tracking_eval(make_model("rwkv7"), tokenizer, ["s4"], [2], 5, 1, 0, 1, 32)


def test_recurlm_eval_runs_s5_and_a5(export_dir, tmp_path):
    out = str(tmp_path / "eval")
    assert eval_main([f"checkpoint={export_dir}", "tasks=[state_tracking]", "state_tracking_tasks=[parity,s5,a5]",
                      "state_tracking_lengths=[4,8]", "state_tracking_examples=2", f"out_dir={out}",
                      "wandb_mode=disabled", "train_seq_len=16"]) == 0
    doc = json.load(open(os.path.join(out, "results.json")))
    tasks = {r["settings"]["task"] for r in doc["results"]}
    assert tasks == {"parity", "s5", "a5"} and os.path.isfile(os.path.join(out, doc["plots"]["state_tracking"]))
