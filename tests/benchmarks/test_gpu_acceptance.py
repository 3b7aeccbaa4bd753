"""``benchmarks/gpu_acceptance.py --dry-run``: every section of the GPU acceptance run, on CPU at
tiny sizes (chunk in place of Triton, naive in place of the GPU references, gloo in place of NCCL),
exactly as CI runs it, so the script is known to work before the first GPU arrives."""
import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "gpu_acceptance.py")
SECTIONS = ["ops", "timing", "train", "syncs", "decode", "doctor", "multi_gpu"]


def test_dry_run_passes_and_reports_every_section(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    proc = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert report["ok"] and report["settings"]["dry_run"] and list(report["sections"]) == SECTIONS
    sections = report["sections"]
    ops = sections["ops"]["rows"]
    assert {r["op"] for r in ops} == {"linear_scan", "gla", "rwkv6", "dplr_delta_rule", "mlstm", "slstm", "titans_memory",
                                      "local_attention"}
    assert {r["dtype"] for r in ops} == {"float32", "bfloat16"} and all(r["error"] <= r["tolerance"] for r in ops)
    assert all(r["reference_over_ours"] > 0 and r["tflops"] > 0 for r in sections["timing"]["rows"])
    train = sections["train"]["rows"]
    assert len(train) == 9 and all(r["last_loss"] < r["first_loss"] and r["tokens_per_s"] > 0 for r in train)
    assert all(b["flat"] for r in sections["decode"]["rows"] for b in r["batches"].values())
    assert all("syncs_by_block" in r for r in sections["syncs"]["rows"])
    assert sections["multi_gpu"]["rows"][0]["backend"] == "gloo" and len(sections["multi_gpu"]["rows"][0]["losses"]) == 2
    markdown = (tmp_path / "gpu_acceptance.md").read_text()
    assert "DRY RUN on CPU" in markdown and all(f"## {name}: ok" in markdown for name in SECTIONS)
