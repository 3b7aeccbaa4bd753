"""EffRem: the total-variation distance between the prediction after the whole context and after
its suffix x_t:T, by t."""
import torch

from recurlm.eval.effrem import cut_points, effrem_eval, final_distribution


def test_final_distribution_is_chunk_independent(make_model):
    model = make_model("rwkv7")
    ids = torch.randint(4, 300, (2, 37))
    full = model(ids)[0][:, -1].double().softmax(-1)
    for chunk in (5, 16, 37):
        torch.testing.assert_close(final_distribution(model, ids, chunk), full, rtol=1e-5, atol=1e-6)


def test_effrem_is_zero_at_t0_in_01_and_matches_a_direct_computation(make_model, synthetic_data):
    model = make_model("hgrn2")
    records, curve = effrem_eval(model, synthetic_data.valid, context=48, points=4, count=3, batch_size=2,
                                 chunk_len=16, train_seq_len=16)
    assert curve["t"] == cut_points(48, 4) == [0, 12, 16, 24, 32, 36, 40, 44, 46, 47]
    assert curve["effrem"][0] == 0 and all(0 <= v <= 1 for v in curve["effrem"])
    assert max(curve["effrem"]) > 1e-4  # a random model's prediction still depends on its context
    from recurlm.eval.perplexity import long_sequences

    rows, _ = long_sequences(synthetic_data.valid, 48, 3)
    with torch.no_grad():
        p, q = (model(x)[0][:, -1].double().softmax(-1) for x in (rows, rows[:, 24:]))
    direct = float((0.5 * (p - q).abs().sum(-1)).mean())
    assert abs(curve["effrem"][3] - direct) < 1e-5  # t = 24
    assert records[-1].summary and records[-1].metric == "mean_tv_first_half"


def test_recurlm_eval_runs_effrem_with_a_plot(trained_run, tmp_path):
    import json
    import os

    from recurlm.cli import eval_main

    out = str(tmp_path / "eval")
    assert eval_main([f"checkpoint={trained_run.run_dir}", "tasks=[effrem]", "effrem_context=64", "effrem_points=2",
                      "position_sequences=2", f"out_dir={out}", "wandb_mode=disabled"]) == 0
    doc = json.load(open(os.path.join(out, "results.json")))
    ts = [r["settings"]["t"] for r in doc["results"] if r["metric"] == "tv"]
    assert ts == cut_points(64, 2) and os.path.isfile(os.path.join(out, doc["plots"]["effrem"]))
