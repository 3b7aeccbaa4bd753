"""Where metrics go: ``<run_dir>/metrics.jsonl`` (strict JSON, one record a line), Weights & Biases
and a progress bar (rank 0).

Also the loss-spike detector (z-score over a window) and MFU against a peak FLOP/s that is
measured on CPU (a float32 matmul) or looked up for known GPUs.
"""
from __future__ import annotations

import glob
import json
import math
import os
import struct
import time
from collections import deque
from typing import Any, Callable, Optional

import psutil
import torch

from recurlm.train.config import LoggerConfig

GPU_PEAK_BF16 = {"H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def measure_cpu_peak_flops(size: int = 1024, repeats: int = 5) -> float:
    """Float32 matmul FLOP/s of this machine (the ceiling MFU is reported against on CPU)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def memory_gb() -> float:
    """Peak GPU memory allocated, or this process's resident memory on CPU, in GiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return psutil.Process().memory_info().rss / 2**30


def peak_flops(configured: float) -> float:
    if configured > 0:
        return configured
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in GPU_PEAK_BF16.items():
            if key in name:
                return value
        return 0.0
    return measure_cpu_peak_flops()


def strict_json_value(value: Any) -> Any:
    """``value`` as strict JSON can hold it: a non-finite float becomes the string ``"nan"``,
    ``"inf"`` or ``"-inf"`` (``json.dumps`` would write ``NaN``, which strict parsers reject)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class SpikeDetector:
    """Flags a loss more than ``zscore`` standard deviations above the mean of the last ``window``."""

    def __init__(self, window: int, zscore: float):
        self.values: deque[float] = deque(maxlen=window)
        self.zscore = zscore

    def update(self, loss: float) -> Optional[float]:
        """Add a loss; return its z-score if it is a spike."""
        z = None
        if len(self.values) >= max(10, self.values.maxlen // 2):
            mean = sum(self.values) / len(self.values)
            std = math.sqrt(sum((v - mean) ** 2 for v in self.values) / len(self.values))
            if std > 0 and (loss - mean) / std > self.zscore:
                z = (loss - mean) / std
        if math.isfinite(loss):
            self.values.append(loss)
        return z


class Monitor:
    """Rank-0 sink of metrics and events; other ranks get a silent instance."""

    def __init__(self, cfg: LoggerConfig, run_dir: str, is_main: bool, total_steps: int, start_step: int,
                 wandb_id: Optional[str], config: dict[str, Any]):
        self.cfg, self.is_main = cfg, is_main
        self.spikes = SpikeDetector(cfg.spike_window, cfg.spike_zscore)
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self.run = None
        self.bar = None
        if not is_main:
            return
        if cfg.wandb.mode != "disabled":
            import wandb

            self.run = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, group=cfg.wandb.group,
                                  tags=list(cfg.wandb.tags), mode=cfg.wandb.mode, dir=run_dir, id=wandb_id,
                                  resume="allow", config=config,
                                  settings=wandb.Settings(console="off", silent=True))
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    @property
    def wandb_id(self) -> Optional[str]:
        return self.run.id if self.run is not None else None

    @property
    def wandb_dir(self) -> Optional[str]:
        return self.run.dir if self.run is not None else None

    def _wandb(self, what: str, action: Callable[[Any], Any]) -> None:
        """Run ``action(self.run)``; if W&B fails (e.g. its service process died with a signal to the
        job), warn once and carry on without it: the metrics file and checkpoints matter more."""
        if self.run is None:
            return
        try:
            action(self.run)
        except Exception as err:  # any failure of the W&B client must not stop training
            self.run = None
            self.write(f"[wandb] disabled after an error in {what}: {err!r}")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.is_main:
            return
        record = {"step": step, **{key: strict_json_value(value) for key, value in metrics.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        self._wandb("log", lambda run: run.log(metrics, step=step))

    def event(self, kind: str, message: str, step: int, alert: bool = True) -> None:
        """A notable event (non-finite step, spike, abort): metrics file, W&B alert, console."""
        if not self.is_main:
            return
        self.log({"event": kind, "message": message}, step)
        self.write(f"[{kind}] step {step}: {message}")
        if alert and self.run is not None and self.cfg.wandb.mode == "online":
            import wandb

            self._wandb("alert", lambda run: run.alert(title=f"recurlm {kind}", text=message,
                                                       level=wandb.AlertLevel.WARN))

    def progress(self, step: int, postfix: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(postfix, refresh=True)

    def write(self, text: str) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def log_artifact(self, directory: str, name: str, metadata: dict[str, Any]) -> None:
        """Upload an exported checkpoint directory as a W&B model artifact (``log_artifacts``)."""
        if not self.is_main or self.run is None or not self.cfg.wandb.log_artifacts:
            return
        import wandb

        artifact = wandb.Artifact(name=name, type="model", metadata=metadata)
        artifact.add_dir(directory)
        self._wandb("log_artifact", lambda run: run.log_artifact(artifact))

    def close(self, summary: dict[str, Any]) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.close()
        if self.run is not None:
            self._wandb("summary", lambda run: run.summary.update(summary))
            self._wandb("finish", lambda run: run.finish())


def _read_transaction_log(path: str) -> list[bytes]:
    """Record payloads of a W&B transaction log (``run-<id>.wandb``): a 7-byte header, then
    32 KiB blocks of records framed as crc32 / length / type (full, first, middle, last)."""
    data, block, pos = open(path, "rb").read(), 32768, 7
    payloads, partial = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        partial = chunk if kind in (1, 2) else partial + chunk
        if kind in (1, 4):
            payloads.append(partial)
    return payloads


def read_offline_run(run_dir: str) -> dict[str, Any]:
    """History and summary of the newest offline W&B run under ``<run_dir>/wandb``, read without
    syncing. A resumed run writes one offline segment per process; segments of the same run id are
    merged in order. Returns ``{"id", "history": [dict], "summary": dict, "artifacts": [name]}``."""
    from wandb.proto import wandb_internal_pb2 as pb

    segments = sorted(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb")))
    if not segments:
        raise FileNotFoundError(f"no offline W&B run under {run_dir}/wandb")
    run_id = os.path.basename(segments[-1])[len("run-"):-len(".wandb")]
    history, summary, artifacts = [], {}, []
    for segment in (s for s in segments if s.endswith(f"run-{run_id}.wandb")):
        for payload in _read_transaction_log(segment):
            record = pb.Record()
            record.ParseFromString(payload)
            kind = record.WhichOneof("record_type")
            if kind == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
            elif kind == "artifact":
                artifacts.append(record.artifact.name)
    return {"id": run_id, "history": history, "summary": summary, "artifacts": artifacts}
