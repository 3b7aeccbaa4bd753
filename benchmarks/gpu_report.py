"""The markdown report of ``gpu_acceptance.py`` (one table per section of its JSON)."""
from __future__ import annotations

from typing import Any, Sequence


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "ok" if value else "FAIL"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A markdown table of ``rows`` with (header, key) ``columns``; a failed row shows its cause."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_fmt(row.get(key)) for _, key in columns]
        if row.get("failure"):
            cells[-1] = f"{cells[-1]} ({row['failure'][:160]})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


COLUMNS = {
    "ops": [("op", "op"), ("preset", "size"), ("shape", "shape"), ("dtype", "dtype"), ("impl", "impl"),
            ("max rel. error", "error"), ("tolerance", "tolerance"), ("ok", "ok")],
    "timing": [("op", "op"), ("preset", "size"), ("shape", "shape"), ("dtype", "dtype"), ("fwd+bwd s", "seconds"),
               ("TFLOP/s", "tflops"), ("of peak", "fraction_of_peak"), ("reference", "reference"),
               ("ref s", "reference_seconds"), ("ref / ours", "reference_over_ours"), ("ok", "ok")],
    "train": [("family", "family"), ("params", "params"), ("tokens/s", "tokens_per_s"), ("MFU", "mfu"),
              ("peak GB", "peak_memory_gb"), ("first loss", "first_loss"), ("last loss", "last_loss"),
              ("first step s", "first_step_s"), ("start-up s", "startup_s"), ("ok", "ok")],
    "syncs": [("family", "family"), ("total", "total"), ("per layer", "per_layer"),
              ("by block type", "syncs_by_block"), ("method", "method"), ("ok", "ok")],
    "decode": [("family", "family"), ("tokens", "tokens"), ("per batch size", "batches"), ("ok", "ok")],
    "doctor": [("exit code", "exit_code"), ("ok", "ok")],
    "multi_gpu": [("backend", "backend"), ("losses", "losses"), ("seconds", "seconds"), ("skipped", "skipped"),
                  ("ok", "ok")],
}


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"# recurlm GPU acceptance ({'DRY RUN on CPU' if s['dry_run'] else report['device']})", "",
             f"Verdict: **{'all sections passed' if report['ok'] else 'FAILED'}**. torch {report['torch']}, "
             f"peak {report['peak_flops'] / 1e12:.1f} TFLOP/s (bf16 table / measured CPU float32), "
             f"impl `{s['impl']}`.", ""]
    for name, section in report["sections"].items():
        lines += [f"## {name}: {'ok' if section['ok'] else 'FAILED'} ({section['seconds']:.1f} s)", "",
                  table(section["rows"], COLUMNS.get(name, [("ok", "ok")])), ""]
        if name == "doctor" and section["rows"] and section["rows"][0].get("output"):
            lines += ["```", section["rows"][0]["output"].strip(), "```", ""]
    return "\n".join(lines)
