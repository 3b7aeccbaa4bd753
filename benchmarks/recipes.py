"""The small-scale recipe study of docs/recipes.md, rerun end to end on CPU.

    python benchmarks/recipes.py [--out outputs/recipes-study] [--parts length_gen state_expansion] [--quick]

Part A, length generalisation (Buitrago & Gu, 2025): for each family (HGRN2, Griffin; ``tiny``
presets) a base model is pretrained at T = 256 on the stdlib corpus, then four equally long
post-training phases start from its weights (``recipe.init_from``): ``none`` (the control: the
same extra steps without a recipe), ``length_gen/state_passing``, ``length_gen/noise_init`` and
``length_gen/other_sequence_init``. Each model is scored by loss per position up to 32 x T with the
state carried across chunks (``recurlm.eval`` task ``ppl_by_position``).

Part B, state expansion (StateX-style), per family of ``MQAR_MODELS`` (RWKV-7 and Hawk, ``tiny``
presets): a base model is trained on multi-query associative recall
(``data=synthetic/mqar``, 1-8 pairs, 1-digit values, a 1024-piece tokenizer so that every key is one
token), expanded x2 (``recurlm-convert expand-state``; the logit change on MQAR text is reported),
and continued with ``recipe=state_expansion``; the control continues the unexpanded model for the
same steps. Scored by MQAR accuracy per number of pairs (chance: 0.1).

    python benchmarks/recipes.py --parts state_expansion    # one part; the other's results are kept

Everything runs in this process (the trainer, the converter and the evaluation through their
Python APIs); the equivalent commands are printed as it goes. Results: ``<out>/results.json``,
``<out>/length_gen.png``, ``<out>/mqar.png`` (one panel per family), and a Markdown summary on stdout.
Threads: ``OMP_NUM_THREADS`` if set, else up to 2.
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

# Part B: MQAR settings under which tiny models learn recall within minutes on CPU (docs/recipes.md,
# "what we tried"): 1-digit values (chance 0.1) and 1024 tokenizer pieces, so every key is one token
MQAR_PAIRS = [1, 2, 4, 8]
MQAR_VALUE_DIGITS = 1
MQAR_EXAMPLES = 32
MQAR_DATA = ["data=synthetic/mqar", "data.sources.0.synthetic.num_docs=20000",
             f"data.sources.0.synthetic.num_pairs={MQAR_PAIRS}".replace(" ", ""),
             f"data.sources.0.synthetic.value_digits={MQAR_VALUE_DIGITS}", "data.tokenizer.vocab_size=1024"]
MQAR_MODELS = {  # family: (overrides, base steps, continued-training steps)
    "rwkv7": (["model=rwkv7"], 1500, 500),
    "hawk": (["model=hawk", "optim.lr=1e-2"], 3000, 1000),
}


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


def state_expansion(out: str, steps: dict[str, list[int]]) -> dict:
    """Part B for every family of ``steps`` ({family: [base steps, continued-training steps]})."""
    from recurlm.train.convert import main as convert_main
    from recurlm.train.export import load_for_inference

    cfg = EvalConfig(tasks=["mqar"], mqar_pairs=MQAR_PAIRS, mqar_examples=MQAR_EXAMPLES,
                     mqar_value_digits=MQAR_VALUE_DIGITS, batch_size=8, plots=False)
    results = {}
    for family, (base_steps, post_steps) in steps.items():
        overrides = MQAR_MODELS[family][0]
        data = [*MQAR_DATA, *overrides]
        root = os.path.join(out, family)
        base_dir, expanded = os.path.join(root, "base"), os.path.join(root, "x2-export")
        base = run([*data, f"train.steps={base_steps}", f"run_dir={base_dir}"])
        res = results[family] = {"base": evaluate(base, cfg, f"mqar-{family}-base", out)}
        say(f"$ recurlm-convert expand-state {base_dir} --factor 2 --out {expanded}")
        convert_main(["expand-state", base_dir, "--factor", "2", "--out", expanded, "--text", mqar_text(base.data)])
        with open(os.path.join(expanded, "expand_state.json")) as f:
            res["transform"] = json.load(f)
        model, _, _ = load_for_inference(expanded)
        res["transform"]["on_documents"] = change_on_documents(base.model, model, base.data)
        base.model, base.step = model, 0  # evaluate the expanded export with the base run's data
        res["expanded"] = evaluate(base, cfg, f"mqar-{family}-expanded", out)
        cont = [*data, f"train.steps={post_steps}"]
        res["control"] = evaluate(run([*cont, f"recipe.init_from={base_dir}", f"run_dir={root}/control"]),
                                  cfg, f"mqar-{family}-control", out)
        res["state_expansion"] = evaluate(run([*cont, "recipe=state_expansion", f"recipe.init_from={expanded}",
                                               f"run_dir={root}/state_expansion"]), cfg, f"mqar-{family}-x2", out)
    return results


def change_on_documents(before, after, data, rows: int = 4, seq_len: int = 256) -> dict:
    """The logit change on MQAR validation documents as the models were trained on them: packed rows
    with a reset at every document start. (The converter's ``--text`` measurement runs the decoded
    documents together without resets, a sequence these models never saw.)"""
    from recurlm.models.expand_state import logit_change

    tokens = [t for i in range(data.valid.num_docs) for t in data.valid.document(i).tolist()][:rows * seq_len]
    ids = torch.tensor(tokens).view(rows, seq_len)
    resets = ids == data.tokenizer.bos_id
    resets[:, 0] = True
    return logit_change(before, after, ids, resets)


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

    if "length_gen" in results:
        families = list(results["length_gen"])
        fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4), squeeze=False)
        for ax, family in zip(axes[0], families):
            for name, metrics in results["length_gen"][family].items():
                buckets = sorted((int(k.split("@")[1].split("-")[0]), int(k.split("-")[-1]), v)
                                 for k, v in metrics.items() if k.startswith("ppl_by_position/loss@"))
                ax.plot([(lo * hi) ** 0.5 for lo, hi, _ in buckets], [v for *_, v in buckets], marker=".",
                        label=name)
            ax.axvline(256, color="grey", ls="--", lw=0.8)
            ax.set(xscale="log", xlabel="position (tokens seen)", ylabel="loss (nats)",
                   title=f"{family} tiny, T = 256")
            ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "length_gen.png"), dpi=120)
    if "state_expansion" in results:
        families = list(results["state_expansion"])
        fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 4), squeeze=False, sharey=True)
        for ax, family in zip(axes[0], families):
            phases = results["state_expansion"][family]
            for name, style in (("base", "o-"), ("expanded", "x:"), ("control", "s-"), ("state_expansion", "^-")):
                acc = sorted((int(k.split("@")[1]), v) for k, v in phases[name].items()
                             if k.startswith("mqar/accuracy@"))
                ax.plot([n for n, _ in acc], [a for _, a in acc], style, label=name)
            ax.axhline(10.0 ** -MQAR_VALUE_DIGITS, color="grey", ls="--", lw=0.8, label="chance")
            t = phases["transform"]
            ax.set(xscale="log", xlabel="key-value pairs", ylabel="accuracy", ylim=(0, 1.02),
                   title=f"MQAR, {family} tiny: state {t['state_bytes_before']} -> {t['state_bytes_after']} B")
            ax.set_xticks(MQAR_PAIRS, [str(n) for n in MQAR_PAIRS])
            ax.minorticks_off()
            ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "mqar.png"), dpi=120)


def change(c: dict) -> str:
    """A logit-change record as 'max / mean |dlogit|, KL, loss before -> after'."""
    return (f"{c['max_abs_logit_diff']:.3g} / {c['mean_abs_logit_diff']:.3g}, {c['kl']:.3g}, "
            f"{c['loss_before']:.4f} -> {c['loss_after']:.4f}")


def summary(results: dict) -> str:
    lines = []
    if "length_gen" in results:
        lines += ["| family | phase | loss <= T | loss > T (to 32T) | last half |", "|---|---|---|---|---|"]
        for family, phases in results["length_gen"].items():
            for name, m in phases.items():
                lines.append(f"| {family} | {name} | {m['ppl_by_position/loss_within_train_len']:.3f} | "
                             f"{m['ppl_by_position/loss_beyond_train_len']:.3f} | "
                             f"{m['ppl_by_position/loss_last_half']:.3f} |")
    if "state_expansion" in results:
        lines += ["", "| family | state bytes | parameters | documents with resets: max / mean \\|dlogit\\|, KL, "
                      "loss | converter `--text` (documents run together): max / mean \\|dlogit\\|, KL, loss |",
                  "|---|---|---|---|---|"]
        for family, se in results["state_expansion"].items():
            t = se["transform"]
            docs = change(t["on_documents"]) if "on_documents" in t else "-"
            lines.append(f"| {family} | {t['state_bytes_before']} -> {t['state_bytes_after']} | "
                         f"{t['params_before']} -> {t['params_after']} | {docs} | {change(t)} |")
        lines += ["", "| family | model | " + " | ".join(f"{n} pairs" for n in MQAR_PAIRS) + " | mean |",
                  "|---" * (3 + len(MQAR_PAIRS)) + "|"]
        for family, se in results["state_expansion"].items():
            for name in ("base", "expanded", "control", "state_expansion"):
                m = se[name]
                lines.append(f"| {family} | {name} | " + " | ".join(f"{m[f'mqar/accuracy@{n}']:.3f}" for n in MQAR_PAIRS)
                             + f" | {m['mqar/mean_accuracy']:.3f} |")
    return "\n".join(lines)


PARTS = ("length_gen", "state_expansion")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/recipes-study")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="which parts to (re)run; the others' results in <out>/results.json are kept")
    parser.add_argument("--quick", action="store_true", help="a few steps and 2 x T only (checks the script)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))
    path = os.path.join(args.out, "results.json")
    results = {}
    if os.path.exists(path) and set(args.parts) != set(PARTS):
        with open(path) as f:
            results = json.load(f)
    for part in args.parts:
        shutil.rmtree(os.path.join(args.out, part), ignore_errors=True)
    steps = dict(base=2, post=1, multiple=2) if args.quick else dict(base=400, post=100, multiple=32)
    steps["mqar"] = {family: [2, 1] if args.quick else list(m[1:]) for family, m in MQAR_MODELS.items()}
    results["steps"] = {**results.get("steps", {}), **steps}
    results["seconds"] = results["seconds"] if isinstance(results.get("seconds"), dict) else {}
    if "length_gen" in args.parts:
        t0 = time.perf_counter()
        results["length_gen"] = length_generalisation(os.path.join(args.out, "length_gen"), ["hgrn2", "griffin"],
                                                      steps["base"], steps["post"], steps["multiple"])
        results["seconds"]["length_gen"] = round(time.perf_counter() - t0)
    if "state_expansion" in args.parts:
        t0 = time.perf_counter()
        results["state_expansion"] = state_expansion(os.path.join(args.out, "state_expansion"), steps["mqar"])
        results["seconds"]["state_expansion"] = round(time.perf_counter() - t0)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    plot(results, args.out)
    say(summary(results))
    say(f"seconds per part: {results['seconds']}; results in {args.out}")


if __name__ == "__main__":
    main()
