"""Generated sbatch scripts (dry runs, no cluster needed), sweeps, the node wrapper and the doctor."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from recurlm.configs import compose
from recurlm.launch import cli as launch_cli
from recurlm.launch import doctor, node
from recurlm.launch.slurm import Element, render_eval, render_train, worker_overrides
from recurlm.train import cli as train_cli


def dry_run(capsys, *args) -> str:
    assert launch_cli.main(["submit", "--dry-run", *args]) == 0
    return capsys.readouterr().out


def sbatch_lines(script: str) -> list[str]:
    return [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_dry_run_renders_every_resource_and_the_training_command(capsys, tiny, tmp_path):
    run_dir = tmp_path / "run"
    out = dry_run(capsys, *tiny, f"run_dir={run_dir}", "optim.lr=2e-3",
                  "launch.slurm.nodes=4", "launch.slurm.gpus_per_node=8", "launch.slurm.cpus_per_task=12",
                  "launch.slurm.mem=200G", "launch.slurm.time=02:00:00", "launch.slurm.partition=gpu",
                  "launch.slurm.account=proj", "launch.slurm.qos=high", "launch.slurm.constraint=h100",
                  "launch.slurm.exclusive=true", "launch.slurm.signal_seconds=300", "launch.nproc_per_node=8",
                  "launch.slurm.extra_sbatch=['--reservation=big','--comment=recurlm']",
                  "launch.slurm.setup=['module load cuda/12.4','source /opt/venv/bin/activate']",
                  "+launch.slurm.env.NCCL_IB_DISABLE=1", "launch.slurm.socket_ifname=ib0",
                  "launch.slurm.nccl_debug=WARN")
    sbatch = sbatch_lines(out)
    for expected in ["--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=12",
                     "--mem=200G", "--time=02:00:00", "--partition=gpu", "--account=proj", "--qos=high",
                     "--constraint=h100", "--exclusive", "--requeue", "--signal=B:USR1@300", "--reservation=big",
                     "--comment=recurlm", f"--output={run_dir}/slurm/logs/%j.out", "--open-mode=append"]:
        assert expected in sbatch, f"{expected} missing from {sbatch}"
    assert "module load cuda/12.4" in out and "source /opt/venv/bin/activate" in out
    for var in ["NCCL_IB_DISABLE=1", "NCCL_SOCKET_IFNAME=ib0", "GLOO_SOCKET_IFNAME=ib0", "NCCL_DEBUG=WARN"]:
        assert f"export {var}" in out
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)' in out
    assert "SLURM_JOB_ID % 1000" in out  # the port follows the job id
    assert 'srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1' in out
    assert "--nproc-per-node=8 --rdzv-backend=c10d" in out
    assert 'launch=none run_dir="$RUN_DIR" resume=auto' in out
    assert f"RUN_DIR={run_dir}" in out
    overrides_line = next(line for line in out.splitlines() if line.startswith("OVERRIDES=("))
    assert "optim.lr=2e-3" in overrides_line and "model.size=tiny" in overrides_line
    tokens = overrides_line[len("OVERRIDES=("):-1].split()
    assert not [t for t in tokens if t.startswith(("launch", "run_dir", "resume"))]  # owned by the script
    assert "scontrol requeue" in out and "trap 'on_signal USR1' USR1" in out
    assert "recurlm.launch.doctor" in out
    assert not (run_dir / "slurm").exists(), "a dry run writes nothing"


def test_rendered_scripts_are_valid_bash(tiny, tmp_path):
    job = compose([*tiny, "launch=slurm", f"run_dir={tmp_path}/r", "launch.slurm.eval_command=echo $RUN_DIR"])
    elements = [Element(str(tmp_path / "r"), worker_overrides(tiny + ["optim.lr='1e-3'"]), 10)]
    for rendered in (render_train(job, elements, str(tmp_path), "n"), render_eval(job, elements, str(tmp_path), "e")):
        path = tmp_path / "script.sh"
        path.write_text(rendered.text)
        check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_defaults_and_switches(capsys, tiny, tmp_path):
    out = dry_run(capsys, *tiny, f"run_dir={tmp_path}/a")
    sbatch = sbatch_lines(out)
    assert "--requeue" in sbatch and "--signal=B:USR1@120" in sbatch and "--nodes=1" in sbatch
    assert not any(s.startswith(("--partition", "--gpus-per-node", "--exclusive", "--mem=")) for s in sbatch)
    out = dry_run(capsys, *tiny, f"run_dir={tmp_path}/b", "launch.slurm.requeue=false",
                  "launch.slurm.signal_seconds=0", "launch.slurm.doctor=false")
    sbatch = sbatch_lines(out)
    assert "--no-requeue" in sbatch and not any(s.startswith("--signal") for s in sbatch)
    assert "REQUEUE_ON_SIGNAL=0" in out and "if ! run_doctor" not in out
    out = dry_run(capsys, *tiny, f"run_dir={tmp_path}/c", "launch.master_port=29500")
    assert "MASTER_PORT=29500" in out and "SLURM_JOB_ID % 1000" not in out


def test_deepspeed_launcher_gets_a_hostfile_and_its_node_rank(capsys, tiny, tmp_path):
    out = dry_run(capsys, *tiny, f"run_dir={tmp_path}/a", "launch.launcher=deepspeed", "launch.nproc_per_node=4",
                  "launch.slurm.nodes=2")
    assert 'sed "s/$/ slots=4/" > "$HOSTFILE"' in out
    assert "-m deepspeed.launcher.runner --hostfile=\"$HOSTFILE\" --no_ssh --node_rank=%SLURM_NODEID%" in out
    assert "--module recurlm.train" in out


def test_train_cli_launch_slurm_dry_run(capsys, tiny, tmp_path):
    """recurlm-train launch=slurm goes through recurlm.launch.slurm.submit_from_train."""
    assert train_cli.main([*tiny, "launch=slurm", "launch.slurm.dry_run=true", f"run_dir={tmp_path}/r"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# ---- {tmp_path}/r/slurm/train.sbatch") and "#SBATCH --nodes=1" in out


def test_eval_job_renders_the_configured_command(capsys, tiny, tmp_path):
    out = dry_run(capsys, *tiny, f"run_dir={tmp_path}/r", "launch.slurm.eval_command=recurlm-convert export $RUN_DIR",
                  "launch.slurm.eval_time=00:20:00")
    eval_part = out.split("eval.sbatch")[1]
    assert "recurlm-convert export $RUN_DIR" in eval_part and "--time=00:20:00" in eval_part
    assert f"--output={tmp_path}/r/slurm/logs/eval-%j.out" in eval_part


def test_sweep_grid_and_multirun_syntax_make_one_array(capsys, tiny, tmp_path):
    combos = launch_cli.expand_sweep(["optim.lr=1e-3,3e-3"], ["seed=range(2)", "train.steps=5"])
    # Hydra's sweep parser prints the values in its own canonical form (1e-3 -> 0.001)
    assert combos == [["optim.lr=0.001", "seed=0", "train.steps=5"], ["optim.lr=0.001", "seed=1", "train.steps=5"],
                      ["optim.lr=0.003", "seed=0", "train.steps=5"], ["optim.lr=0.003", "seed=1", "train.steps=5"]]
    sweep_dir = tmp_path / "sweep"
    assert launch_cli.main(["sweep", "--dry-run", "--parallel", "2", "--sweep-dir", str(sweep_dir),
                            "--grid", "optim.lr=1e-3,3e-3", "seed=range(2)", *tiny,
                            "launch.slurm.eval_command=echo evaluated"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=0-3%2" in out
    assert f"--output={sweep_dir}/%a/slurm/logs/%A_%a.out" in out
    assert f"RUN_DIR={sweep_dir}/3" in out
    block3 = out.split("    3)")[1].split(";;")[0]
    assert "optim.lr=0.003" in block3 and "seed=1" in block3 and "MODEL_FAMILY=hgrn2" in block3
    assert "#SBATCH --array=0-3" in out.split("eval.sbatch")[1]  # one evaluation per element
    assert not sweep_dir.exists()


def test_worker_overrides_drop_what_the_script_sets():
    assert worker_overrides(["launch=slurm", "launch.slurm.nodes=2", "run_dir=x", "resume=none", "optim.lr=1",
                             "+launch.slurm.env.A=1", "model=griffin"]) == ["optim.lr=1", "model=griffin"]


def test_status_of_a_run_without_jobs(capsys, tmp_path):
    assert launch_cli.main(["status", str(tmp_path)]) == 0
    assert "no Slurm jobs recorded" in capsys.readouterr().out
    assert launch_cli.main(["status", str(tmp_path / "missing")]) == 2


# -- the node wrapper --------------------------------------------------------------------------
WORKER = textwrap.dedent("""
    import signal, sys, time
    # like the trainer: the handler is installed only after a slow start (USR1 is ignored until then)
    time.sleep(1.5)
    got = []
    signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
    open(sys.argv[1] + ".ready", "w").close()
    deadline = time.time() + 30
    while not got and time.time() < deadline:
        time.sleep(0.05)
    open(sys.argv[1], "w").write(str(len(got)))
    sys.exit(75 if got else 0)
""")
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def test_node_wrapper_turns_a_signal_into_one_save_request(tmp_path):
    """A USR1 sent to the whole step before the worker can handle it (as Slurm does) neither kills
    the launcher nor gets lost: the worker receives it once its handler is installed."""
    marker = str(tmp_path / "worker.out")
    cmd = [sys.executable, "-m", "recurlm.launch.node", "--", sys.executable, "-c", LAUNCHER,
           sys.executable, "-c", WORKER, marker, "recurlm.train"]
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)  # wrapper, launcher and worker started; the worker still ignores USR1
    os.killpg(proc.pid, signal.SIGUSR1)  # Slurm signals every process of the step
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err  # the worker exited 75 after its save; the wrapper reports 0
    assert open(marker).read() == "1", err  # delivered exactly once, after the handler existed
    assert "sent SIGUSR1 to training process" in err


def test_node_wrapper_passes_on_the_launcher_exit_code_without_a_signal():
    assert node.main(["--", sys.executable, "-c", "import sys; sys.exit(7)"]) == 7


# -- the doctor ------------------------------------------------------------------------------
def test_doctor_passes_on_this_machine(capsys):
    assert doctor.main(["--family", "griffin"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "deepspeed" in out and "flash-linear-attention" in out
    assert "ok   kernel linear_scan chunk fwd+bwd [cpu]" in out and "ok   kernel local_attention chunk fwd+bwd [cpu]" in out


def test_doctor_detects_a_wrong_kernel():
    cases = doctor._cases()
    good = cases["gla"]

    def off_by_a_bit(**kwargs):
        out, state = good.op(**kwargs)
        return (out + 1e-2 if kwargs["impl"] == "chunk" else out), state

    checks = doctor.check_kernel("gla", doctor.KernelCase(off_by_a_bit, good.inputs), doctor.torch.device("cpu"),
                                 ["chunk"])
    assert len(checks) == 1 and not checks[0].ok and "max rel. error" in checks[0].detail


def test_doctor_compares_gradients_and_bf16():
    """A kernel whose forward is right but whose backward is not fails the fwd+bwd check; the bf16
    check compares bf16 inputs against the float32 reference on the same rounded values."""
    cases = doctor._cases()
    good = cases["linear_scan"]

    class WrongGrad(doctor.torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    def wrong_backward(**kwargs):
        out, state = good.op(**kwargs)
        return (WrongGrad.apply(out) if kwargs["impl"] == "chunk" else out), state

    cpu = doctor.torch.device("cpu")
    forward_only = doctor.check_kernel("linear_scan", doctor.KernelCase(wrong_backward, good.inputs), cpu, ["chunk"])
    assert forward_only[0].ok
    with_grads = doctor.check_kernel("linear_scan", doctor.KernelCase(wrong_backward, good.inputs), cpu, ["chunk"],
                                     backward=True)
    assert not with_grads[0].ok and "fwd+bwd" in with_grads[0].name
    bf16 = doctor.check_kernel("linear_scan", good, cpu, ["chunk"], dtype=doctor.torch.bfloat16, backward=True)
    assert bf16[0].ok and "fwd+bwd bfloat16 [cpu]" in bf16[0].name, bf16[0].detail


def test_doctor_knows_the_kernels_of_every_family():
    from recurlm.models.registry import FAMILIES

    assert set(doctor.FAMILY_KERNELS) == set(FAMILIES)
    assert {op for ops in doctor.FAMILY_KERNELS.values() for op in ops} <= set(doctor._cases())


def test_doctor_names_an_unknown_family():
    checks = doctor.check_kernels("mamba", doctor.torch.device("cpu"))
    assert not checks[0].ok and "hgrn2" in checks[0].detail


@pytest.mark.distributed
def test_doctor_all_reduce_over_two_ranks():
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
                          "-m", "recurlm.launch.doctor", "--no-kernels", "--timeout", "60"],
                         capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok   all_reduce gloo over 2 ranks: sum 3 (expected 3)" in out.stdout


def test_doctor_fails_fast_when_a_rank_is_missing():
    from recurlm.train.distributed import free_port

    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "recurlm.launch.doctor", "--no-kernels", "--timeout", "5"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1
    assert time.monotonic() - start < 60
    assert "FAIL all_reduce gloo over 2 ranks" in out.stdout and "FAILED" in out.stderr


def test_slurm_up_script_is_executable():
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), ".ci", "slurm-up.sh")
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    assert shutil.which("bash")


def test_doctor_cases_at_a_preset_head_dim():
    """The CUDA-only round at head dim 64 builds valid inputs for every op (run here with chunk)."""
    cpu = doctor.torch.device("cpu")
    for name, case in doctor._cases(head_dim=doctor.PRESET_HEAD_DIM).items():
        checks = doctor.check_kernel(f"{name} head_dim 64", case, cpu, ["chunk"])
        assert checks[0].ok, (name, checks[0].detail)


def test_template_placeholders_and_values_must_match():
    """A line holding only a placeholder takes a list of lines (none: the line goes), an inline one a
    string; a placeholder without a value, or a value without a placeholder, is an error naming both."""
    from recurlm.launch.sbatch import render_template

    values = {"generated": "now", "sbatch_options": [], "environment": ["export A=1", "export B=2"],
              "run_settings": ["RUN_DIR=/r"], "python_dir": "/py", "eval_command": "echo {{kept}}"}
    text = render_template("eval.sbatch", values)
    assert "# Generated by recurlm-launch on now:" in text and "export A=1\nexport B=2\nRUN_DIR=/r\n" in text
    assert "#SBATCH" not in text and text.endswith("echo {{kept}}\n")  # values are never rescanned
    with pytest.raises(KeyError, match=r"eval.sbatch.*\['python_dir'\].*\['typo'\]"):
        render_template("eval.sbatch", {**{k: v for k, v in values.items() if k != "python_dir"}, "typo": "x"})
