"""recurlm: a pretraining stack for large recurrent language models.

The repository root *is* the ``recurlm`` package (``package_dir={"recurlm": "."}``), so the
code imports as ``recurlm.<folder>`` and no bare ``models``/``data``/``eval`` package is installed.
"""
import os
import sys

from setuptools import setup

# The build runs this file with the repository root first on sys.path, where our folders would
# shadow PyPI packages of the same name. The PyPI ``kernels`` package (a transformers dependency)
# registers an ``egg_info.writers`` entry point that setuptools imports while building any
# package: with the root on sys.path that import found our ``kernels/`` and the build failed.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

SUBPACKAGES = [
    "configs",
    "data",
    "eval",
    "kernels",
    "launch",
    "models",
    "train",
]


def _find_subpackages() -> list[str]:
    """Every folder below the listed top-level folders that holds an ``__init__.py``."""
    found = ["recurlm"]
    for top in SUBPACKAGES:
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            if "__init__.py" in files:
                found.append("recurlm." + root.replace(os.sep, "."))
    return sorted(found)


setup(
    name="recurlm",
    version="0.1.0",
    description="Pretraining stack for large recurrent language models",
    python_requires=">=3.10",
    packages=_find_subpackages(),
    package_dir={"recurlm": "."},
    package_data={"recurlm.configs": ["*.yaml", "**/*.yaml"], "recurlm.launch": ["templates/*"]},
    install_requires=[
        # GPU clusters may use any recent torch; the CPU path pins torch==2.13.0 (constraints-cpu.txt).
        "torch>=2.4",
        "deepspeed>=0.15",
        "triton>=3.0",
        "flash-linear-attention>=0.2",
        "hydra-core>=1.3",
        "omegaconf>=2.3",
        "wandb>=0.17",
        "sentencepiece>=0.2",
        "safetensors>=0.4",
        "numpy>=1.24",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "einops>=0.7",
        "zstandard>=0.22",
        "pyarrow>=14",
        "lm-eval>=0.4.4",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2",
            "transformers>=4.48",
            "xlstm>=2.0",
            "mlstm-kernels>=2.0",
            "titans-pytorch>=0.4",
            "rwkv>=0.8",
            "datasets>=2.18",
            "accelerate>=1.0",  # lm-eval's own hf model (tests/interop: exported directories)
        ],
    },
    entry_points={
        "console_scripts": [
            "recurlm-train=recurlm.cli:train_main",
            "recurlm-data=recurlm.data.cli:main",
            "recurlm-eval=recurlm.cli:eval_main",
            "recurlm-generate=recurlm.eval.generate_cli:main",
            "recurlm-convert=recurlm.train.convert:main",
            "recurlm-launch=recurlm.cli:launch_main",
            "recurlm-doctor=recurlm.launch.doctor:main",
        ],
    },
)
