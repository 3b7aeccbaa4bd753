"""The small-scale recipe study of docs/recipes.md, rerun on CPU, one command per part:

    python benchmarks/recipes.py --parts state_tracking [--out outputs/recipes-study] [--quick]
    python benchmarks/recipes.py --parts length_gen
    python benchmarks/recipes.py --parts statex

``state_tracking`` (Grazzi et al., 2025): tiny RWKV-7 and tiny Hawk (a diagonal family), each with
and without ``allow_neg_eigval``, trained on parity (``data=synthetic/parity``,
1..L digits, L = 8) and scored on the final answer at 2, 4 and L, 2L, ..., 16L digits
(``tasks=[state_tracking]``).

``length_gen`` (Buitrago Ruiz & Gu, 2025): a tiny model (``--family``, default RWKV-7) pretrained at a short context T on the
stdlib corpus, scored by loss per position up to 64 T (``ppl_by_position``); then the four
interventions (``length_gen/random_noise``, ``fitted_noise``, ``state_passing``, ``tbtt``) and a
control (``none``) as equally long post-training phases from its weights, each scored the same way
and by EffRem (``tasks=[effrem]``).

``statex`` (Shen et al., 2025): tiny RWKV-7 with small heads (``head_dim`` 8: state-limited) trained on MQAR, then
``recurlm-convert expand-state`` with ``--method reinit`` and ``inherit``, on one layer in six
(``every:6``: the last of 2) and on all layers, each continued with ``recipe=state_expansion``; a
control continues the unexpanded model. Scored by MQAR accuracy per number of pairs.

Everything runs in this process (trainer, converter and evaluation through their Python APIs); the
equivalent commands are printed as it goes. Results: ``<out>/results.json`` (each part's results
are replaced by a rerun of that part, the others kept), ``<out>/<part>.png``, a Markdown summary on
stdout. Threads: ``OMP_NUM_THREADS`` if set, else up to 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import torch

from recurlm.configs import compose
from recurlm.eval import EvalConfig, run_tasks
from recurlm.train.trainer import Trainer

COMMON = ["model.size=tiny", "train.global_batch_size=8", "train.eval_batches=2", "train.checkpoint_every=0",
          "logger.progress=false", "logger.log_every=50", "logger.wandb.mode=disabled", "eval.tasks=[ppl]",
          "eval.max_batches=1", "eval.batch_size=2"]

# state tracking: train on 1..L digits, score at L..16 L
PARITY_L = 8
PARITY_DATA = ["data=synthetic/parity", f"data.sources.0.synthetic.length=[{','.join(map(str, range(1, PARITY_L + 1)))}]",
               "data.tokenizer.vocab_size=272", "train.seq_len=128"]
PARITY_MODELS = {"rwkv7": ["model=rwkv7"], "rwkv7 neg eigval": ["model=rwkv7", "model.allow_neg_eigval=true"],
                 "hawk": ["model=hawk"], "hawk neg eigval": ["model=hawk", "model.allow_neg_eigval=true"]}
PARITY_LENGTHS = [2, 4, *(PARITY_L * m for m in (1, 2, 4, 8, 16))]

# length generalisation: a short training context, many tokens per parameter
LG_T = 64
LG_MULTIPLE = 64
LG_RECIPES = ["none", "length_gen/random_noise", "length_gen/fitted_noise", "length_gen/state_passing", "length_gen/tbtt"]
LG_EXTRA = {"length_gen/random_noise": ["recipe.noise_scale=0.5"],
            "length_gen/fitted_noise": ["recipe.refit_every=100", "recipe.fit_batches=2"]}

# StateX: MQAR with more pairs than RWKV-7's small heads hold (1-digit values, chance 0.1, and 1024
# pieces so every key is one token: docs/recipes.md, "what we tried")
MQAR_PAIRS = [1, 2, 4, 8, 16]
MQAR_DATA = ["data=synthetic/mqar", "data.sources.0.synthetic.num_docs=20000",
             f"data.sources.0.synthetic.num_pairs=[{','.join(map(str, MQAR_PAIRS))}]",
             "data.sources.0.synthetic.value_digits=1", "data.tokenizer.vocab_size=1024", "train.seq_len=128",
             "model=rwkv7", "model.head_dim=8"]
STATEX_VARIANTS = {"reinit every:6": ["--method", "reinit", "--layers", "every:6"],
                   "inherit every:6": ["--method", "inherit", "--layers", "every:6"],
                   "reinit all": ["--method", "reinit", "--layers", "all"],
                   "inherit all": ["--method", "inherit", "--layers", "all"]}

STEPS = {"state_tracking": 1000, "length_gen_base": 1500, "length_gen_post": 500, "statex_base": 800,
         "statex_post": 200}
QUICK = {"state_tracking": 2, "length_gen_base": 2, "length_gen_post": 2, "statex_base": 2, "statex_post": 1}


def say(text: str) -> None:
    print(text, flush=True)


def run(overrides: list[str]) -> Trainer:
    """Train one phase (printing the equivalent command); returns the trainer (model and data)."""
    say("$ recurlm-train " + " ".join(overrides))
    t0 = time.perf_counter()
    trainer = Trainer(compose([*COMMON, *overrides]))
    result = trainer.run()
    say(f"  {time.perf_counter() - t0:.0f}s, val_loss {result.first_val_loss:.3f} -> {result.last_val_loss:.3f}")
    return trainer


def evaluate(trainer: Trainer, cfg: EvalConfig, name: str, out: str, train_seq_len: int) -> tuple[dict, dict]:
    """(flat {task/metric@setting: value}, {task: curve}) of ``cfg`` on the trainer's model."""
    t0 = time.perf_counter()
    curves: dict = {}
    res = run_tasks(trainer.model, trainer.data.tokenizer, trainer.data, cfg, os.path.join(out, "eval", name),
                    trainer.step, train_seq_len=train_seq_len)
    say(f"  eval {name}: {time.perf_counter() - t0:.0f}s")
    flat = {}
    for r in res["records"]:
        tag = "".join(f"@{k}={r.settings[k]}" for k in ("task", "length", "num_pairs", "t", "from", "to")
                      if k in r.settings and r.metric in ("accuracy", "tv", "loss"))
        flat[f"{r.task}/{r.metric}{tag}"] = r.value
    return flat, curves


def state_tracking(out: str, steps: int) -> dict:
    cfg = EvalConfig(tasks=["state_tracking"], state_tracking_tasks=["parity"], state_tracking_lengths=PARITY_LENGTHS,
                     state_tracking_examples=64, batch_size=16, chunk_len=256, plots=False)
    results = {}
    for name, overrides in PARITY_MODELS.items():
        trainer = run([*PARITY_DATA, *overrides, f"train.steps={steps}",
                       f"run_dir={os.path.join(out, name.replace(' ', '_'))}"])
        results[name], _ = evaluate(trainer, cfg, name.replace(" ", "_"), out, 128)
    return results


def length_generalisation(out: str, family: str, base_steps: int, post_steps: int) -> dict:
    cfg = EvalConfig(tasks=["ppl_by_position", "effrem"], length_multiple=LG_MULTIPLE, position_sequences=4,
                     effrem_context=16 * LG_T, effrem_points=8, batch_size=4, chunk_len=1024, plots=False)
    data = [f"model={family}", f"train.seq_len={LG_T}"]
    base_dir = os.path.join(out, "base")
    base = run([*data, f"train.steps={base_steps}", f"run_dir={base_dir}"])
    results = {"base": evaluate(base, cfg, "base", out, LG_T)[0]}
    for recipe in LG_RECIPES:
        name = recipe.split("/")[-1]
        trainer = run([*data, f"recipe={recipe}", *LG_EXTRA.get(recipe, []), f"recipe.init_from={base_dir}",
                       f"train.steps={post_steps}", "schedule.warmup=0.1", f"run_dir={os.path.join(out, name)}"])
        results[name] = evaluate(trainer, cfg, name, out, LG_T)[0]
    return results


def statex(out: str, base_steps: int, post_steps: int) -> dict:
    from recurlm.train.convert import main as convert_main

    cfg = EvalConfig(tasks=["mqar"], mqar_pairs=MQAR_PAIRS, mqar_examples=32, mqar_value_digits=1, batch_size=8,
                     plots=False)
    base_dir = os.path.join(out, "base")
    base = run([*MQAR_DATA, f"train.steps={base_steps}", f"run_dir={base_dir}"])
    results = {"base": evaluate(base, cfg, "base", out, 128)[0]}
    post = [*MQAR_DATA, f"train.steps={post_steps}"]
    results["control"] = evaluate(run([*post, f"recipe.init_from={base_dir}", f"run_dir={out}/control"]),
                                  cfg, "control", out, 128)[0]
    for name, args in STATEX_VARIANTS.items():
        export = os.path.join(out, name.replace(" ", "_").replace(":", ""))
        say(f"$ recurlm-convert expand-state {base_dir} {' '.join(args)} --out {export}")
        assert convert_main(["expand-state", base_dir, *args, "--out", export, "--seq-len", "128"]) == 0
        with open(os.path.join(export, "expand_state.json")) as f:
            transform = json.load(f)
        # the phase length is set explicitly (the recipe's default post_train_ratio would give 0.1 x base)
        trainer = run([*post, "recipe=state_expansion", "recipe.post_train_ratio=0", f"recipe.init_from={export}",
                       f"run_dir={export}-cpt"])
        results[name] = {**evaluate(trainer, cfg, name, out, 128)[0],
                         "state_bytes": transform["state_bytes_after"], "state_bytes_before": transform["state_bytes_before"]}
    return results


def _series(metrics: dict, prefix: str, key: str) -> list[tuple[float, float]]:
    return sorted((float(k.split(f"@{key}=")[1].split("@")[0]), v) for k, v in metrics.items()
                  if k.startswith(prefix) and f"@{key}=" in k)


def plot(results: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "state_tracking" in results:
        _accuracy_plot(plt, results["state_tracking"], "state_tracking/accuracy", "length", chance=0.5,
                       xlabel="digits", ylabel="parity accuracy", marker=PARITY_L,
                       title=f"parity, tiny models trained on 1..{PARITY_L} digits",
                       path=os.path.join(out, "state_tracking.png"))
    if "length_gen" in results:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
        for name, m in results["length_gen"]["phases"].items():
            buckets = sorted((int(k.split("@from=")[1].split("@")[0]), int(k.split("@to=")[1]), v)
                             for k, v in m.items() if k.startswith("ppl_by_position/loss@"))
            left.plot([(lo * hi) ** 0.5 for lo, hi, _ in buckets], [v for *_, v in buckets], ".-", label=name)
            pts = _series(m, "effrem/tv", "t")
            right.plot([16 * LG_T - t for t, _ in pts], [v for _, v in pts], "o-", ms=3, label=name)
        left.axvline(LG_T, color="grey", ls="--", lw=0.8)
        left.set(xscale="log", xlabel="position (tokens seen)", ylabel="loss (nats)",
                 title=f"{results['length_gen']['family']} tiny, trained at T = {LG_T}")
        right.axvline(LG_T, color="grey", ls="--", lw=0.8)
        right.set(xscale="log", xlabel="tokens kept, T - t", ylabel="EffRem_T(t) (TV)", ylim=(-0.02, 1.02),
                  title=f"EffRem at T = {16 * LG_T}: effect of the tokens before t")
        left.legend(fontsize=8)
        right.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "length_gen.png"), dpi=120)
    if "statex" in results:
        _accuracy_plot(plt, results["statex"], "mqar/accuracy", "num_pairs", chance=0.1,
                       xlabel="key-value pairs", ylabel="recall accuracy", marker=None,
                       title="MQAR, tiny RWKV-7 (head_dim 8), StateX variants",
                       path=os.path.join(out, "statex.png"))


def _accuracy_plot(plt, runs: dict, metric: str, key: str, chance: float, xlabel: str, ylabel: str,
                   marker: int | None, title: str, path: str) -> None:
    """One accuracy-versus-``key`` curve per run, with the chance level (and ``marker``: the longest
    training length) drawn in."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, m in runs.items():
        pts = _series(m, metric, key)
        ax.plot([p for p, _ in pts], [a for _, a in pts], "o-", label=name)
    ax.axhline(chance, color="grey", ls="--", lw=0.8, label="chance")
    if marker is not None:
        ax.axvline(marker, color="tab:red", ls=":", lw=1, label="longest training length")
    ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel, ylim=(-0.03, 1.03), title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summary(results: dict) -> str:
    lines = []
    if "state_tracking" in results:
        lines += ["| model | " + " | ".join(f"{n} digits" for n in PARITY_LENGTHS) + " |",
                  "|---" * (1 + len(PARITY_LENGTHS)) + "|"]
        for name, m in results["state_tracking"].items():
            accs = dict(_series(m, "state_tracking/accuracy", "length"))
            lines.append(f"| {name} | " + " | ".join(f"{accs[n]:.2f}" for n in PARITY_LENGTHS) + " |")
    if "length_gen" in results:
        lines += ["", "| phase | loss <= T | loss > T | last half | EffRem, keeping the last T tokens | "
                      "EffRem mean, t <= 8 T |", "|---|---|---|---|---|---|"]
        for name, m in results["length_gen"]["phases"].items():
            effrem = dict(_series(m, "effrem/tv", "t"))
            lines.append(f"| {name} | {m['ppl_by_position/loss_within_train_len']:.3f} | "
                         f"{m['ppl_by_position/loss_beyond_train_len']:.3f} | {m['ppl_by_position/loss_last_half']:.3f} | "
                         f"{effrem[15 * LG_T]:.3g} | {m['effrem/mean_tv_first_half']:.3g} |")
    if "statex" in results:
        lines += ["", "| model | state bytes | " + " | ".join(f"{n} pairs" for n in MQAR_PAIRS) + " | mean |",
                  "|---" * (3 + len(MQAR_PAIRS)) + "|"]
        for name, m in results["statex"].items():
            accs = dict(_series(m, "mqar/accuracy", "num_pairs"))
            lines.append(f"| {name} | {m.get('state_bytes', '-')} | " + " | ".join(f"{accs[n]:.2f}" for n in MQAR_PAIRS)
                         + f" | {m['mqar/mean_accuracy']:.3f} |")
    return "\n".join(lines)


PARTS = ("state_tracking", "length_gen", "statex")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/recipes-study")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="which parts to (re)run; the others' results in <out>/results.json are kept")
    parser.add_argument("--family", default="rwkv7", help="length_gen: the model family")
    parser.add_argument("--quick", action="store_true", help="a few steps only (checks the script)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))
    path = os.path.join(args.out, "results.json")
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    steps = QUICK if args.quick else STEPS
    results["steps"] = steps
    seconds = results.setdefault("seconds", {})
    for part in args.parts:
        shutil.rmtree(os.path.join(args.out, part), ignore_errors=True)
        t0 = time.perf_counter()
        part_out = os.path.join(args.out, part)
        if part == "state_tracking":
            results[part] = state_tracking(part_out, steps["state_tracking"])
        elif part == "length_gen":
            results[part] = {"family": args.family, "phases": length_generalisation(
                part_out, args.family, steps["length_gen_base"], steps["length_gen_post"])}
        else:
            results[part] = statex(part_out, steps["statex_base"], steps["statex_post"])
        seconds[part] = round(time.perf_counter() - t0)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    plot(results, args.out)
    say(summary(results))
    say(f"seconds per part: {seconds}; results in {args.out}")


if __name__ == "__main__":
    main()
