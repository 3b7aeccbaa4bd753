"""The repository root is the ``recurlm`` package, so its folders are named like PyPI packages
(``kernels``, ``models``, ``data``, ``train``, ``eval``). No process the project starts may put the
root on ``sys.path``, where those folders would shadow the real packages (transformers imports
the PyPI ``kernels`` package: shadowed, the test collection itself failed).

Each test installs third-party stand-ins for those five names on ``PYTHONPATH`` plus a
``sitecustomize`` probe that, when a process exits, records where each name would be imported
from. Then it starts, from the repository root and without ``PYTHONSAFEPATH`` in the environment:
the README's test command, a 2-process local launch, and a job from a rendered Slurm script.
"""
import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

import recurlm

ROOT = os.path.dirname(os.path.abspath(recurlm.__file__))
NAMES = ("kernels", "models", "data", "train", "eval")

PROBE = textwrap.dedent('''
    import atexit, importlib.util, json, os, sys

    def _record():
        out = {}
        for name in %r:
            module = sys.modules.get(name)
            origin = getattr(module, "__file__", None) if module else None
            if origin is None:
                try:
                    spec = importlib.util.find_spec(name)
                except (ImportError, ValueError):
                    spec = None
                origin = spec.origin if spec else None
            out[name] = origin
        path = os.path.join(os.environ["RECURLM_PROBE_DIR"], f"{os.getpid()}.json")
        with open(path, "w") as f:
            json.dump({"argv": sys.orig_argv, "origins": out}, f)

    if os.environ.get("RECURLM_PROBE_DIR"):
        atexit.register(_record)
''' % (NAMES,))


@pytest.fixture
def stand_ins(tmp_path):
    """(environment with the stand-ins and the probe, probe directory, stand-in directory)."""
    site = tmp_path / "third_party"
    for name in NAMES:
        if name == "kernels" and _pypi_kernels_installed():
            continue  # the real PyPI package is there (transformers needs it): it must win, not a stand-in
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text("THIRD_PARTY_STAND_IN = True\n")
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(PROBE)
    probes = tmp_path / "probes"
    probes.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONSAFEPATH", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(site), RECURLM_PROBE_DIR=str(probes), OMP_NUM_THREADS="1")
    return env, probes, site


def _pypi_kernels_installed() -> bool:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("kernels")
        return True
    except PackageNotFoundError:
        return False


def _origins_of(probes, module: str) -> list[dict]:
    """The probes of the processes started as ``python [...] -m <module>``."""
    found = []
    for path in glob.glob(os.path.join(probes, "*.json")):
        with open(path) as f:
            record = json.load(f)
        argv = record["argv"]
        if "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == [module]:
            found.append(record["origins"])
    return found


def _assert_third_party(origins: dict, site) -> None:
    for name, origin in origins.items():
        assert origin is not None, f"{name}: no module found"
        assert not os.path.abspath(origin).startswith(ROOT + os.sep), \
            f"'import {name}' resolves into the checkout ({origin}), shadowing the installed package"
        if os.path.isdir(os.path.join(site, name)):
            assert os.path.abspath(origin).startswith(str(site)), f"{name}: {origin} instead of the stand-in"


@pytest.mark.skipif(not os.environ.get("RECURLM_SHADOW_PROBE"), reason="run by test_readme_test_command_*")
def test_probe_imports_the_third_party_packages():
    import importlib

    for name in NAMES:
        module = importlib.import_module(name)
        assert not os.path.abspath(module.__file__).startswith(ROOT + os.sep), f"{name} from {module.__file__}"
    import recurlm.kernels

    assert os.path.abspath(recurlm.kernels.__file__).startswith(ROOT + os.sep)


@pytest.mark.parametrize("command", [["-P", "-m", "pytest"], ["-m", "pytest"]], ids=["readme", "without-P"])
def test_test_collection_imports_the_real_packages(stand_ins, command):
    env, probes, site = stand_ins
    proc = subprocess.run([sys.executable, *command, "-q", "-p", "no:cacheprovider", "-k", "probe_imports",
                           "tests/launch/test_import_shadowing.py"], cwd=ROOT, env={**env, "RECURLM_SHADOW_PROBE": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    [origins] = _origins_of(probes, "pytest")
    _assert_third_party(origins, site)


@pytest.mark.distributed
def test_local_launch_from_the_repository_root(stand_ins, tiny, tmp_path):
    env, probes, site = stand_ins
    run_dir = tmp_path / "run"
    proc = subprocess.run(["recurlm-train", *tiny, "train.steps=2",
                           "launch=local", "launch.nproc_per_node=2", f"run_dir={run_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "2").is_dir()
    workers = _origins_of(probes, "recurlm.train")
    assert len(workers) == 2, f"expected 2 worker probes, got {len(workers)}"
    for origins in workers:
        _assert_third_party(origins, site)


def test_slurm_script_keeps_the_working_directory_off_sys_path(stand_ins, tiny, tmp_path):
    """The rendered script's environment block runs before its python commands and sets
    PYTHONSAFEPATH; a ``python -m`` started with that block from the root imports the real packages."""
    env, probes, site = stand_ins
    proc = subprocess.run(["recurlm-launch", "submit", "--dry-run", *tiny, f"run_dir={tmp_path / 'r'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = proc.stdout
    lines = script.splitlines()
    first_python = next(i for i, line in enumerate(lines) if " -m " in line and not line.lstrip().startswith("#"))
    assert "export PYTHONSAFEPATH=1" in lines[:first_python]
    preamble = "\n".join(line for line in lines[:first_python] if line.startswith("export "))
    probe = subprocess.run(["bash", "-c", f"{preamble}\n{sys.executable} -m recurlm.launch.node -- true"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    [origins] = _origins_of(probes, "recurlm.launch.node") or [None]
    assert origins, "the probe did not run"
    _assert_third_party(origins, site)


@pytest.mark.slurm
def test_slurm_job_started_from_the_repository_root(slurm_cluster, stand_ins, tiny, tmp_path):
    env, probes, site = stand_ins
    run_dir = str(tmp_path / "slurm-run")
    proc = subprocess.run(["recurlm-train", *tiny, "train.steps=2",
                           "launch=slurm", "launch.slurm.doctor=false", "launch.slurm.time=00:10:00",
                           f"run_dir={run_dir}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = slurm_cluster.jobs_of(run_dir)[0]["job_id"]
    slurm_cluster.wait_until_done([job], 420)
    state = slurm_cluster.job_state(job)
    assert state["JobState"] == "COMPLETED", slurm_cluster.read_log(os.path.join(run_dir, "slurm", "logs",
                                                                                 f"{job}.out"))[-3000:]
    workers = _origins_of(probes, "recurlm.train")
    assert workers, "no training process left a probe"
    for origins in workers:
        _assert_third_party(origins, site)
