"""The run directory: where a run's config, metrics, checkpoints, W&B files and code snapshot go."""
from __future__ import annotations

import json
import os
import subprocess
import time

import recurlm


def default_run_dir(family: str, size: str) -> str:
    return os.path.join("outputs", f"{family}-{size}-{time.strftime('%Y%m%d-%H%M%S')}")


def snapshot_code(run_dir: str) -> None:
    """Record which code produced the run: package version, git commit and dirty flag."""
    repo = os.path.dirname(os.path.abspath(recurlm.__file__))
    info = {"recurlm_version": recurlm.__version__, "package_dir": repo}
    try:
        info["git_commit"] = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                                            text=True, timeout=10, check=True).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(["git", "-C", repo, "status", "--porcelain"], capture_output=True,
                                                text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    os.makedirs(os.path.join(run_dir, "code"), exist_ok=True)
    with open(os.path.join(run_dir, "code", "version.json"), "w") as f:
        json.dump(info, f, indent=1)
