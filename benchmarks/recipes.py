"""The small-scale recipe study of docs/recipes.md, rerun end to end on CPU.

    python benchmarks/recipes.py [--out outputs/recipes-study] [--quick]

Part A, length generalisation (Buitrago & Gu, 2025): for each family (HGRN2, Griffin; ``tiny``
presets) a base model is pretrained at T = 256 on the stdlib corpus, then four equally long
post-training phases start from its weights (``recipe.init_from``): ``none`` (the control: the
same extra steps without a recipe), ``length_gen/state_passing``, ``length_gen/noise_init`` and
``length_gen/other_sequence_init``. Each model is scored by loss per position up to 32 x T with the
state carried across chunks (``recurlm.eval`` task ``ppl_by_position``).

Part B, state expansion (StateX-style): an HGRN2 with a small state (``expand_ratio`` 8) is trained
on multi-query associative recall (``data=synthetic/mqar``), expanded x2 (``recurlm-convert
expand-state``; the logit change is reported), and continued with ``recipe=state_expansion``;
the control continues the unexpanded model for the same steps. Scored by MQAR accuracy.

Everything runs in this process (the trainer, the converter and the evaluation through their
Python APIs); the equivalent commands are printed as it goes. Results: ``<out>/results.json``,
``<out>/length_gen.png``, ``<out>/mqar.png``, and a Markdown summary on stdout.
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

LENGTH_GEN_RECIPES = ["none", "length_gen/state_passing", "length_gen/noise_init", "length_gen/other_sequence_init"]
COMMON = ["model.size=tiny", "train.seq_len=256", "train.global_batch_size=8", "train.eval_batches=2",
          "train.checkpoint_every=0", "logger.progress=false", "logger.log_every=10", "logger.wandb.mode=disabled",
          "eval.tasks=[ppl]", "eval.max_batches=1", "eval.batch_size=2"]


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


def evaluate(trainer: Trainer, cfg: EvalConfig, name: str, out: str) -> dict:
    t0 = time.perf_counter()
    res = run_tasks(trainer.model, trainer.data.tokenizer, trainer.data, cfg, os.path.join(out, "eval", name),
                    trainer.step, train_seq_len=256)
    say(f"  eval {name}: {time.perf_counter() - t0:.0f}s")
    return {f"{r.task}/{r.metric}" + (f"@{r.settings.get('from')}-{r.settings.get('to')}" if "from" in r.settings
                                     and r.metric == "loss" else "")
            + (f"@{r.settings['num_pairs']}" if "num_pairs" in r.settings and r.metric == "accuracy" else ""): r.value
            for r in res["records"]}


def length_generalisation(out: str, families: list[str], base_steps: int, post_steps: int, multiple: int) -> dict:
    cfg = EvalConfig(tasks=["ppl_by_position"], length_multiple=multiple, position_sequences=2, batch_size=2,
                     plots=False)
    results = {}
    for family in families:
        base_dir = os.path.join(out, family, "base")
        base = run([f"model={family}", f"train.steps={base_steps}", f"run_dir={base_dir}"])
        results[family] = {"base": evaluate(base, cfg, f"{family}-base", out)}
        for recipe in LENGTH_GEN_RECIPES:
            name = recipe.split("/")[-1]
            trainer = run([f"model={family}", f"recipe={recipe}", f"recipe.init_from={base_dir}",
                           f"train.steps={post_steps}", "schedule.warmup=0.1",
                           f"run_dir={os.path.join(out, family, name)}"])
            results[family][name] = evaluate(trainer, cfg, f"{family}-{name}", out)
    return results


def state_expansion(out: str, base_steps: int, post_steps: int) -> dict:
    from recurlm.train.convert import main as convert_main

    data = ["data=synthetic/mqar", "data.sources.0.synthetic.num_docs=4000",
            "data.sources.0.synthetic.num_pairs=[2,4,8,16]", "model=hgrn2", "model.expand_ratio=8"]
    cfg = EvalConfig(tasks=["mqar"], mqar_pairs=[2, 4, 8, 16], mqar_examples=16, batch_size=8, plots=False)
    base_dir = os.path.join(out, "mqar", "base")
    base = run([*data, f"train.steps={base_steps}", f"run_dir={base_dir}"])
    results = {"base": evaluate(base, cfg, "mqar-base", out)}
    expanded = os.path.join(out, "mqar", "x2-export")
    say(f"$ recurlm-convert expand-state {base_dir} --factor 2 --out {expanded}")
    convert_main(["expand-state", base_dir, "--factor", "2", "--out", expanded, "--text",
                  mqar_text(base.data)])
    with open(os.path.join(expanded, "expand_state.json")) as f:
        results["transform"] = json.load(f)
    from recurlm.train.export import load_for_inference

    model, _, _ = load_for_inference(expanded)
    base.model, base.step = model, 0  # evaluate the expanded export with the base run's data
    results["expanded"] = evaluate(base, cfg, "mqar-expanded", out)
    cont = [*data, f"train.steps={post_steps}"]
    results["control"] = evaluate(run([*cont, f"recipe.init_from={base_dir}", f"run_dir={out}/mqar/control"]),
                                  cfg, "mqar-control", out)
    results["state_expansion"] = evaluate(run([*cont, "recipe=state_expansion", f"recipe.init_from={expanded}",
                                               f"run_dir={out}/mqar/state_expansion"]), cfg, "mqar-x2", out)
    return results


def mqar_text(data) -> str:
    """A file of MQAR validation text: the logit change is measured on the task's own data."""
    import tempfile

    tokens = [t for i in range(min(data.valid.num_docs, 64)) for t in data.valid.document(i).tolist()]
    path = os.path.join(tempfile.mkdtemp(), "mqar.txt")
    with open(path, "w") as f:
        f.write(data.tokenizer.decode(tokens))
    return path


def plot(results: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(results["length_gen"])
    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4), squeeze=False)
    for ax, family in zip(axes[0], families):
        for name, metrics in results["length_gen"][family].items():
            buckets = sorted((int(k.split("@")[1].split("-")[0]), int(k.split("-")[-1]), v)
                             for k, v in metrics.items() if k.startswith("ppl_by_position/loss@"))
            ax.plot([(lo * hi) ** 0.5 for lo, hi, _ in buckets], [v for *_, v in buckets], marker=".", label=name)
        ax.axvline(256, color="grey", ls="--", lw=0.8)
        ax.set(xscale="log", xlabel="position (tokens seen)", ylabel="loss (nats)", title=f"{family} tiny, T = 256")
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "length_gen.png"), dpi=120)
    if "state_expansion" in results:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in ("base", "expanded", "control", "state_expansion"):
            acc = sorted((int(k.split("@")[1]), v) for k, v in results["state_expansion"][name].items()
                         if k.startswith("mqar/accuracy@"))
            ax.plot([n for n, _ in acc], [a for _, a in acc], marker="o", label=name)
        ax.set(xscale="log", xlabel="key-value pairs", ylabel="accuracy", title="MQAR, HGRN2 tiny (expand_ratio 8)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "mqar.png"), dpi=120)


def summary(results: dict) -> str:
    lines = ["| family | phase | loss <= T | loss > T (to 32T) | last half |", "|---|---|---|---|---|"]
    for family, phases in results["length_gen"].items():
        for name, m in phases.items():
            lines.append(f"| {family} | {name} | {m['ppl_by_position/loss_within_train_len']:.3f} | "
                         f"{m['ppl_by_position/loss_beyond_train_len']:.3f} | {m['ppl_by_position/loss_last_half']:.3f} |")
    if "state_expansion" in results:
        se = results["state_expansion"]
        t = se["transform"]
        lines += ["", f"expand-state x2: state {t['state_bytes_before']} -> {t['state_bytes_after']} bytes, params "
                      f"{t['params_before']} -> {t['params_after']}, max |dlogit| {t['max_abs_logit_diff']:.3f}, "
                      f"mean |dlogit| {t['mean_abs_logit_diff']:.4f}, KL {t['kl']:.4f}, loss "
                      f"{t['loss_before']:.3f} -> {t['loss_after']:.3f}", "",
                  "| model | " + " | ".join(k.split("@")[1] + " pairs" for k in se["base"] if "@" in k) + " | mean |",
                  "|---" * (2 + sum("@" in k for k in se["base"])) + "|"]
        for name in ("base", "expanded", "control", "state_expansion"):
            m = se[name]
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for k, v in m.items() if "@" in k)
                         + f" | {m['mqar/mean_accuracy']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/recipes-study")
    parser.add_argument("--quick", action="store_true", help="a few steps and 2 x T only (checks the script)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    steps = dict(base=2, post=1, mqar_base=2, mqar_post=1, multiple=2) if args.quick else \
        dict(base=400, post=100, mqar_base=600, mqar_post=200, multiple=32)
    t0 = time.perf_counter()
    results = {"steps": steps,
               "length_gen": length_generalisation(args.out, ["hgrn2", "griffin"], steps["base"], steps["post"],
                                                   steps["multiple"])}
    results["state_expansion"] = state_expansion(args.out, steps["mqar_base"], steps["mqar_post"])
    results["seconds"] = round(time.perf_counter() - t0)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, args.out)
    say(summary(results))
    say(f"total {results['seconds']}s; results in {args.out}")


if __name__ == "__main__":
    main()
