"""tools/slurm_torchrun.sbatch without SLURM: its syntax, and runs with stub ``srun`` and
``scontrol`` commands on PATH and the SLURM_* variables a job would have. A stub torchrun
records the launch command of a two-node job; a real torchrun trains one epoch as a
one-node, one-process job on the CPU through the same c10d rendezvous flags."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, assert_ok, common_args, script_env

SBATCH = REPO / "tools" / "slurm_torchrun.sbatch"

STUBS = {
    # srun: record its own options (all in --opt=value form), then run the command once, as the
    # task of the only node there is.
    "srun": """#!/usr/bin/env bash
opts=()
while [[ ${1:-} == -* ]]; do opts+=("$1"); shift; done
printf '%s\\n' "${opts[@]}" > "$STUB_LOG/srun.args"
exec "$@"
""",
    # scontrol show hostnames LIST: the job's nodes, one a line.
    "scontrol": """#!/usr/bin/env bash
[ "$1 $2 $3" = "show hostnames $SLURM_JOB_NODELIST" ] || { echo "scontrol stub: $*" >&2; exit 1; }
printf '%s\\n' $STUB_HOSTS
""",
    # torchrun: record the arguments as JSON.
    "torchrun": """#!/usr/bin/env python3
import json, os, sys
with open(os.path.join(os.environ["STUB_LOG"], "torchrun.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "omp": os.environ.get("OMP_NUM_THREADS"), "cwd": os.getcwd()}, f)
""",
}


@pytest.fixture
def stubs(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir, log


def sbatch(stubs, *args, cwd, **env):
    """Run the batch script as SLURM would on the first node (from its spool folder, cwd)."""
    bin_dir, log = stubs
    settings = {**script_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(log),
                "STUB_HOSTS": "gpu-node-07 gpu-node-08", "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2",
                "SLURM_JOB_NODELIST": "gpu-node-[07-08]", "SLURM_SUBMIT_DIR": str(REPO),
                "SLURM_CPUS_PER_TASK": "32", "PYTHON": sys.executable}
    for key in ("OMP_NUM_THREADS", "REPO", "SCRIPT", "GPUS_PER_NODE", "SLURM_GPUS_ON_NODE", "TORCHRUN"):
        settings.pop(key, None)
    settings.update(env)
    return subprocess.run(["bash", str(SBATCH), *map(str, args)], cwd=cwd, env=settings,
                          capture_output=True, text=True, timeout=300)


def test_syntax():
    proc = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_sbatch_headers_come_before_the_first_command():
    lines = SBATCH.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines[1:], 1) if line.strip() and not line.startswith("#"))
    headers = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert headers and max(headers) < first_command
    assert "#SBATCH --ntasks-per-node=1" in lines   # one torchrun per node
    assert {"#SBATCH --requeue", "#SBATCH --signal=B:USR1@300"} <= set(lines)   # preemption and time limit


def test_two_node_job_launches_torchrun_with_the_rendezvous_flags(stubs, tmp_path):
    proc = sbatch(stubs, "--epochs", "1", "--device", "cpu", cwd=tmp_path, TORCHRUN="torchrun", GPUS_PER_NODE="4")
    assert_ok(proc)
    log = stubs[1]
    launched = json.loads((log / "torchrun.json").read_text())
    assert launched["argv"] == [
        "--nnodes", "2", "--nproc-per-node", "4", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "gpu-node-07:24242", "--rdzv-id", "4242",
        str(REPO / "main.py"), "--epochs", "1", "--device", "cpu", "--resume", "auto"]
    assert launched["omp"] == "8"          # 32 CPUs of the task over 4 processes
    assert launched["cwd"] == str(REPO)
    srun = (log / "srun.args").read_text().split()
    assert {"--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"} <= set(srun)
    assert "--cpus-per-task=32" in srun    # srun does not inherit it from sbatch
    assert "gpu-node-07:24242" in proc.stdout


def test_the_time_limit_signal_requeues_the_job_and_the_run_goes_on(stubs, tmp_path):
    """SIGUSR1 (SLURM's warning before the time limit) while srun runs: the script asks scontrol to
    requeue its job and still reports srun's own exit status."""
    bin_dir, log = stubs
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\n'
                                      '[ "$1" = requeue ] && { echo "$*" > "$STUB_LOG/requeue"; exit 0; }\n'
                                      'printf "%s\\n" $STUB_HOSTS\n')
    (bin_dir / "torchrun").write_text("#!/usr/bin/env bash\nsleep 2\nexit 3\n")
    env = {**script_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(log),
           "STUB_HOSTS": "n1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "n1",
           "SLURM_SUBMIT_DIR": str(REPO), "TORCHRUN": "torchrun", "GPUS_PER_NODE": "1"}
    proc = subprocess.Popen(["bash", str(SBATCH)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=30)
    assert (log / "requeue").read_text().split() == ["requeue", "4242"]
    assert "requeueing job 4242" in out
    assert proc.returncode == 3, err


def launched_endpoint(stubs, tmp_path, **env) -> str:
    assert_ok(sbatch(stubs, cwd=tmp_path, TORCHRUN="torchrun", **env))
    argv = json.loads((stubs[1] / "torchrun.json").read_text())["argv"]
    return argv[argv.index("--rdzv-endpoint") + 1]


@pytest.mark.slow
def test_two_jobs_on_one_first_node_meet_at_different_ports(stubs, tmp_path):
    ports = {launched_endpoint(stubs, tmp_path, SLURM_JOB_ID=job) for job in ("4242", "4243", "987654")}
    assert ports == {"gpu-node-07:24242", "gpu-node-07:24243", "gpu-node-07:27654"}


@pytest.mark.slow
def test_srun_gets_the_task_cpus_given_to_sbatch(stubs, tmp_path):
    launched_endpoint(stubs, tmp_path, SLURM_CPUS_PER_TASK="12")
    assert "--cpus-per-task=12" in (stubs[1] / "srun.args").read_text().split()
    (stubs[1] / "srun.args").unlink()
    launched_endpoint(stubs, tmp_path, SLURM_CPUS_PER_TASK="")   # sbatch without --cpus-per-task
    assert not any(a.startswith("--cpus-per-task") for a in (stubs[1] / "srun.args").read_text().split())


def test_script_port_and_gpu_count_come_from_the_environment(stubs, tmp_path):
    proc = sbatch(stubs, "--config", "configs/imagenet_resnet18.yaml", cwd=tmp_path, TORCHRUN="torchrun",
                  SCRIPT="train_old_model.py", RDZV_PORT="29611", SLURM_GPUS_ON_NODE="2",
                  SLURM_JOB_ID="4242_7")  # no job number: RDZV_PORT is needed, and enough
    assert_ok(proc)
    argv = json.loads((stubs[1] / "torchrun.json").read_text())["argv"]
    assert argv[argv.index("--nproc-per-node") + 1] == "2"
    assert argv[argv.index("--rdzv-endpoint") + 1] == "gpu-node-07:29611"
    assert argv[-5:] == [str(REPO / "train_old_model.py"), "--config", "configs/imagenet_resnet18.yaml",
                         "--resume", "auto"]


@pytest.mark.parametrize("env, message", [
    ({"SLURM_JOB_ID": ""}, "error: no SLURM job; submit this with sbatch"),
    ({"SCRIPT": "evil.py"}, "error: SCRIPT=evil.py; choose main.py, train_old_model.py or train_new_model.py"),
    ({"SLURM_SUBMIT_DIR": "/nonexistent"},
     "error: no main.py in /nonexistent; submit from the repository root or set REPO"),
    ({"SLURM_JOB_ID": "42_7"}, "error: SLURM_JOB_ID=42_7 is not a job number; set RDZV_PORT"),
])
def test_mistakes_get_one_line_and_exit_status_2(stubs, tmp_path, env, message):
    proc = sbatch(stubs, cwd=tmp_path, TORCHRUN="torchrun", **env)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert line.startswith(message) and "\n" not in line
    assert not (stubs[1] / "torchrun.json").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_one_node_one_process_trains_on_the_cpu_through_the_real_torchrun(stubs, tiny_data, tmp_path):
    """The same command line with the real torchrun (c10d rendezvous on this machine): one epoch
    of the old model on the tiny data set."""
    out = tmp_path / "run"
    proc = sbatch(stubs, *common_args(tiny_data), "--output-dir", out, "--save", tmp_path / "old.pth",
                  cwd=tmp_path, SCRIPT="train_old_model.py", STUB_HOSTS="localhost", SLURM_JOB_NUM_NODES="1",
                  SLURM_JOB_NODELIST="localhost", GPUS_PER_NODE="1", SLURM_CPUS_PER_TASK="1",
                  RDZV_PORT=str(free_port()))
    assert_ok(proc)
    assert proc.stdout.count("[old] epoch 1/1") == 1
    assert (out / "results.json").is_file() and (tmp_path / "old.pth").is_file()
