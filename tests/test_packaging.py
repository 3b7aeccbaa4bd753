"""The wheel holds only the ``recurlm`` package (the repository root mapped onto it), with every
subpackage, the YAML configs and the sbatch templates, and no bare top-level ``models``/``data``/``train``/``eval``."""
import configparser
import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_only_the_recurlm_package(tmp_path):
    # build from a copy without the checkout's build/: setuptools reuses build/lib, so modules
    # deleted since the last build would still be in the wheel
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns("build", ".git", "*.egg-info", "outputs", "wandb",
                                                                 "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(source)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("recurlm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"recurlm"}
    for package in ["kernels/gla", "models", "data", "train", "eval", "launch", "configs"]:
        assert f"recurlm/{package}/__init__.py" in names, package
    assert "recurlm/configs/train.yaml" in names
    assert "recurlm/configs/model/hgrn2.yaml" in names
    assert "recurlm/configs/model_sizes/griffin.yaml" in names
    assert "recurlm/configs/recipe/length_gen/state_passing.yaml" in names
    for template in ["train.sbatch", "eval.sbatch", "doctor_check.sh"]:  # recurlm.launch.sbatch renders these
        assert f"recurlm/launch/templates/{template}" in names, template
    assert not any(n.startswith("recurlm/tests/") for n in names)
    assert "recurlm/cli.py" in names  # the root entry points (recurlm-train, recurlm-launch)
    entry_points = configparser.ConfigParser()
    entry_points.read_string(zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode())
    scripts = dict(entry_points["console_scripts"])
    assert scripts["recurlm-train"] == "recurlm.cli:train_main"
    for script, target in scripts.items():  # every console script names a function that exists
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function, None)), f"{script} = {target}"
    # test-only code lives under tests/ (kernel harness, fla's CPU stand-ins), not in the package
    assert not any(n.startswith("recurlm/kernels/") and n.endswith("/testing.py") for n in names)
    assert "recurlm/kernels/fla_interpret.py" not in names and "recurlm/models/convert/fla_cpu.py" not in names
    assert "recurlm/kernels/gla/examples.py" in names  # runtime: the compile gate and recurlm-doctor
