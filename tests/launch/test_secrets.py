"""Secrets in launch.slurm.env never land in a job script: they go to a 0600 file the script sources."""
import os
import stat
import subprocess

from recurlm.configs import compose
from recurlm.launch.slurm import SECRETS_FILE, Element, _write, render_eval, render_train


def test_secret_env_values_stay_out_of_job_scripts(tmp_path):
    job = compose(["launch=slurm", "+launch.slurm.env.WANDB_API_KEY=sk-123 secret", "+launch.slurm.env.HF_TOKEN=hf_x",
                   "+launch.slurm.env.NCCL_IB_DISABLE=1", "launch.slurm.eval_command=recurlm-eval"])
    script_dir = str(tmp_path / "slurm")
    elements = [Element(str(tmp_path), [], 10)]
    scripts = [render_train(job, elements, script_dir, "t"), render_eval(job, elements, script_dir, "e")]
    for script in scripts:
        _write(script)
        text = open(script.path).read()
        assert "sk-123" not in text and "hf_x" not in text
        assert "export NCCL_IB_DISABLE=1" in text  # ordinary settings stay in the script
        assert f"set -a; . {os.path.join(script_dir, SECRETS_FILE)}; set +a" in text
    secrets = os.path.join(script_dir, SECRETS_FILE)
    assert stat.S_IMODE(os.stat(secrets).st_mode) == 0o600
    sourced = subprocess.run(["bash", "-c", f"set -a; . {secrets}; set +a; echo \"$WANDB_API_KEY|$HF_TOKEN\""],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert sourced == "sk-123 secret|hf_x"
