"""benchmarks/perf_model.py: its memory and byte formulas, and docs/performance.md's tables being
exactly its output (regenerate with the command in the doc when a model's FLOPs change)."""
import contextlib
import io
import os

import pytest

from recurlm.benchmarks import perf_model

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "performance.md")


def test_zero_memory_model():
    P, L, d, T = 1e9, 24, 2048, 4096
    per_gpu = {s: perf_model.memory_per_gpu(P, L, d, 1, T, 8, s, False) for s in (1, 2, 3)}
    activations = T * d * 34 * L
    assert per_gpu[1] == pytest.approx(4 * P + 12 * P / 8 + activations)
    assert per_gpu[3] == pytest.approx(16 * P / 8 + activations) and per_gpu[3] < per_gpu[2] < per_gpu[1]
    checkpointed = perf_model.memory_per_gpu(P, L, d, 1, T, 8, 3, True)
    assert checkpointed == pytest.approx(16 * P / 8 + T * d * (2 * L + 34))


def test_op_bytes_and_flops():
    flops, nbytes = perf_model.op_cost("gla", {"heads": 4, "head_dim": 64}, 1024)
    # q, k in bf16, v and o in bf16, g in float32, the float32 [64, 64] state per 64-token chunk
    assert nbytes == 4 * (2 * 64 * 2 + 2 * 64 * 2) + 4 * 64 * 4 + 4 * 64 * 64 * 4 / 64
    assert flops > 0
    assert perf_model.op_cost("linear_scan", {"dim": 100}, 64)[1] == 100 * 8


def test_docs_tables_are_the_scripts_output():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        perf_model.main([])
    with open(DOC) as f:
        doc = f.read()
    tables = doc[doc.index("## Tables\n\n") + len("## Tables\n\n"):]
    assert tables.strip() == out.getvalue().strip(), \
        "docs/performance.md is stale: regenerate its Tables section with `python -m recurlm.benchmarks.perf_model`"
