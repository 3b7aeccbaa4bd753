"""recurlm-doctor compile: the gate compiles real launches for a GPU target (no GPU needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recurlm.kernels.gpu_arch import SHARED_MEMORY_PER_BLOCK
from recurlm.launch.compile_gate import SPILL_FAIL_BYTES, classify, excuse_autotune_candidates
from recurlm.launch.compile_gate.scenarios import preset_scenarios


def test_subset_compiles_for_a100_within_limits(tmp_path):
    """A representative subset, end to end in a fresh process (no interpreter): sLSTM (fused kernel
    at head dim 64, the steps path at 192), mLSTM and the Hawk scan in float32 and bfloat16, for
    sm_80 (the smaller shared memory). The full gate: ``recurlm-doctor compile --arch 80,90``."""
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-P", "-c", "import sys; from recurlm.launch.doctor import main; sys.exit(main())",
         "compile", "--arch", "80", "--presets", "xlstm/small,xlstm/125m,hawk/small", "--ops",
         "slstm,mlstm,linear_scan", "--dtypes", "float32,bfloat16", "--timeout", "240", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())
    kernels = {row["kernel"] for row in rows}
    assert {"_slstm_fwd_kernel", "_slstm_bwd_kernel", "_step_fwd_kernel", "_step_bwd_kernel", "_mlstm_fwd_kernel",
            "_mlstm_bwd_kernel", "_linear_scan_fwd_kernel", "_linear_scan_bwd_kernel"} <= kernels
    for row in rows:
        assert row["ok"] and row["arch"] == 80 and row["shared_limit"] == SHARED_MEMORY_PER_BLOCK[80]
        assert 0 < row["shared_bytes"] <= row["shared_limit"] or row["shared_bytes"] == 0
        assert 0 < row["registers"] <= 255 and row["spilled_bytes"] <= SPILL_FAIL_BYTES
        assert row["num_warps"] >= 1 and row["status"] in ("ok", "warn-spill")
    assert {"float32", "bfloat16"} <= {d for row in rows for d in row["dtype"].split(",")}
    assert "sm_80:" in result.stdout and "passed" in result.stdout


@pytest.mark.parametrize("row,status", [
    ({"ok": False, "shared_bytes": 0, "shared_limit": 1, "spilled_bytes": 0}, "compile"),
    ({"ok": True, "shared_bytes": 2, "shared_limit": 1, "spilled_bytes": 0}, "shared-memory"),
    ({"ok": True, "shared_bytes": 1, "shared_limit": 1, "spilled_bytes": SPILL_FAIL_BYTES + 1}, "spill"),
    ({"ok": True, "shared_bytes": 1, "shared_limit": 1, "spilled_bytes": 8}, "warn-spill"),
    ({"ok": True, "shared_bytes": 1, "shared_limit": 1, "spilled_bytes": 0}, "ok"),
])
def test_classify(row, status):
    assert classify(row, SPILL_FAIL_BYTES) == status


def test_grid_comes_from_every_preset():
    """Every family's presets reach the grid; head dims as the presets set them."""
    scenarios = preset_scenarios()
    covered = {preset.split("/")[0] for s in scenarios for preset in s.presets}
    assert covered == {"hgrn2", "griffin", "hawk", "rwkv6", "rwkv7", "titans_mac", "titans_mag", "titans_mal", "xlstm"}
    slstm_dims = {dict(s.dims)["dim"] for s in scenarios if s.op == "slstm"}
    assert {384, 512} <= slstm_dims                         # xLSTM 760m and 1.3b
    windows = {(dict(s.dims)["head_dim"], dict(s.dims)["window"]) for s in scenarios if s.op == "local_attention"}
    assert (128, 1025) in windows and (256, 2049) in windows  # Griffin 100m-14b, RecurrentGemma


def test_autotune_candidate_fails_only_without_a_usable_config():
    """A spilling candidate is skipped by the autotuner when its launch has another usable config."""
    rows = [{"status": "spill", "autotune_sites": ["k#1"]}, {"status": "ok", "autotune_sites": ["k#1"]},
            {"status": "shared-memory", "autotune_sites": ["k#2"]}, {"status": "spill", "autotune_sites": []}]
    excuse_autotune_candidates(rows)
    assert [row["status"] for row in rows] == ["autotune-skip", "ok", "shared-memory", "spill"]
