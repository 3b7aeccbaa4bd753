"""Every host-side reduction of the trainer goes through ``train.distributed.all_reduce_scalar``,
whose tensor sits on the device the process group's backend needs (NCCL: CUDA, gloo: CPU).

The NCCL case cannot run without GPUs; what runs here is the mapping (unit tested) and a real
2-process gloo world in which every collective the helpers issue is checked against that mapping.
``benchmarks/gpu_acceptance.py`` runs the 2-GPU NCCL step when two GPUs are present."""
import ast
import inspect
import json
import subprocess
import sys

import pytest
import torch

from recurlm.train import checkpoint, distributed, trainer
from recurlm.train.distributed import (BACKEND_DEVICE_TYPES, all_reduce_max, all_reduce_mean, all_reduce_scalar,
                                       collective_device)


def test_backend_device_mapping(monkeypatch):
    assert BACKEND_DEVICE_TYPES["nccl"] == "cuda"
    assert collective_device("gloo") == torch.device("cpu")
    assert collective_device("GLOO") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert collective_device("nccl") == torch.device("cuda", 3)
    with pytest.raises(ValueError, match="unknown torch.distributed backend 'foo'"):
        collective_device("foo")


def test_single_process_reductions_are_identities():
    assert all_reduce_mean(2.5) == 2.5 and all_reduce_max(1.0) == 1.0
    with pytest.raises(ValueError, match="op must be one of"):
        all_reduce_scalar(1.0, "mean")


def _collective_calls(module) -> list[str]:
    """Names of torch.distributed collectives called directly in ``module``'s source."""
    tree = ast.parse(inspect.getsource(module))
    return [node.func.attr for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "dist"
            and node.func.attr in ("all_reduce", "reduce", "all_gather", "reduce_scatter")]


def test_trainer_and_checkpoint_reduce_only_through_the_helper():
    assert _collective_calls(trainer) == [] and _collective_calls(checkpoint) == []
    assert _collective_calls(distributed) == ["all_reduce"]  # the one place


WORKER = """
import json, sys
import torch.distributed as dist
from recurlm.train.distributed import BACKEND_DEVICE_TYPES, all_reduce_max, all_reduce_mean

dist.init_process_group("gloo")
rank, devices, real_all_reduce = dist.get_rank(), [], dist.all_reduce

def recording_all_reduce(tensor, *args, **kwargs):
    devices.append(tensor.device.type)
    return real_all_reduce(tensor, *args, **kwargs)

dist.all_reduce = recording_all_reduce
result = {"mean": all_reduce_mean(float(rank + 1)), "max": all_reduce_max(float(rank)), "devices": devices,
          "expected": BACKEND_DEVICE_TYPES[dist.get_backend()]}
with open(f"{sys.argv[1]}/{rank}.json", "w") as f:
    json.dump(result, f)
dist.destroy_process_group()
"""


@pytest.mark.distributed
def test_reductions_at_two_ranks_use_the_backends_device(tmp_path, subprocess_env):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.run([sys.executable, "-P", "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env=subprocess_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        assert result["mean"] == 1.5 and result["max"] == 1.0
        assert result["devices"] == [result["expected"]] * 2 == ["cpu", "cpu"]
