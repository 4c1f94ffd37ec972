"""Training as real processes: SIGKILL + resume and SIGTERM + resume equal an uninterrupted run, torchrun
restarts a killed worker, a launcher's end takes its torchrun workers with it (on a loaded machine too), and
two torchrun nodes train together over a c10d rendezvous on loopback."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers.processes import cpu_burners, free_port, private_network, wait_until_gone

pytestmark = pytest.mark.integration
STEPS = 48


def args(data, out, *extra):
    settings = {"train.model": "micro-32", "train.shards": str(data / "train"), "train.batch_size": 16,
                "train.steps_per_epoch": STEPS // 2, "train.epochs": 2, "train.checkpoint_every": 5,
                "train.keep_checkpoints": 2, "train.warmup_steps": 3, "train.lr": 1e-3, "sampling.k": 3,
                "loader.workers": 2}
    sets = [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]
    return ["train", "--out", str(out), *sets, *extra]


def cli(*a):
    return [sys.executable, "-m", "flair_cli", *a]


def final_weights(out):
    return torch.load(out / "checkpoints" / f"step-{STEPS:08d}.pt", weights_only=True)["model"]


def steps_logged(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, "training ended before it could be interrupted"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_sigkill_and_resume_ends_with_the_same_weights(tiny_data, tmp_path):
    subprocess.run(cli(*args(tiny_data, tmp_path / "reference")), check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(cli(*args(tiny_data, killed)), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(killed / "checkpoints" / "step-00000010.pt", process)
    os.killpg(process.pid, signal.SIGKILL)  # the trainer and its loader workers, mid-epoch
    process.wait()
    assert not (killed / "checkpoints" / f"step-{STEPS:08d}.pt").exists()

    subprocess.run(cli(*args(tiny_data, killed, "--resume", "auto")), check=True, capture_output=True)
    reference, resumed = final_weights(tmp_path / "reference"), final_weights(killed)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert steps_logged(killed) == list(range(1, STEPS + 1))


def test_sigterm_stops_between_steps_on_a_loaded_machine_and_resume_ends_with_the_same_weights(tiny_data,
                                                                                               tmp_path):
    subprocess.run(cli(*args(tiny_data, tmp_path / "reference")), check=True, capture_output=True)
    stopped = tmp_path / "stopped"
    with cpu_burners(2):
        process = subprocess.Popen(cli(*args(tiny_data, stopped)), start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(stopped / "checkpoints" / "step-00000010.pt", process)
        sent = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)  # as torchrun stops a worker: its loader workers get it too
        _, stderr = process.communicate(timeout=60)
        _, left = wait_until_gone(str(stopped), timeout=30)
        seconds = time.monotonic() - sent
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    line = stderr.strip().splitlines()[-1]
    step = int(line.split(" at step ")[1].split()[0])
    assert line == (f"flair train: stopped by SIGTERM at step {step} of {STEPS}; --resume auto continues "
                    f"from step {step}")
    assert 10 <= step < STEPS and (stopped / "checkpoints" / f"step-{step:08d}.pt").is_file()
    assert left == [], f"still running {seconds:.1f} s after the SIGTERM: {left}"
    print(f"SIGTERM to a training on a loaded machine: stopped at step {step}, every process gone "
          f"{seconds:.1f} s later")
    assert steps_logged(stopped) == list(range(1, step + 1))

    subprocess.run(cli(*args(tiny_data, stopped, "--resume", "auto")), check=True, capture_output=True)
    reference, resumed = final_weights(tmp_path / "reference"), final_weights(stopped)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert steps_logged(stopped) == list(range(1, STEPS + 1))


LAUNCHER = """
import signal, sys
from pathlib import Path
from flair_cli.processes import run_tree
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as a Prefect flow run turns SIGTERM into an exception
run_tree(sys.argv[1:], cwd=Path.cwd(), env=None, grace=10)
"""  # noqa: E501 - the launcher script verbatim


@pytest.mark.parametrize("end", ["SIGTERM", "SIGKILL"])
def test_a_launchers_end_takes_torchrun_and_its_workers_with_it_on_a_loaded_machine(tiny_data, tmp_path, end):
    """A flow task launches torchrun with run_tree. Stopped (SIGTERM), the task stops the whole tree; killed
    outright (SIGKILL), the kernel's parent-death signals do: torchrun gets SIGTERM, its workers SIGKILL once
    it is gone. Either way nothing naming the run folder survives, even with every core busy."""
    out = tmp_path / "run"
    long_run = ("--set", "train.epochs=50")
    with cpu_burners(2):
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, *torchrun(
            "--standalone", "--nproc_per_node=1", "-m", "flair_cli", *args(tiny_data, out, *long_run))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(out / "checkpoints" / "step-00000005.pt", launcher, timeout=300)
        sent = time.monotonic()
        launcher.send_signal(getattr(signal, end))
        launcher.wait(timeout=60)
        _, left = wait_until_gone(str(out), timeout=60)
        seconds = time.monotonic() - sent
    assert left == [], f"still running {seconds:.1f} s after {end} to the launcher: {left}"
    print(f"{end} to the launcher: every process of the run gone {seconds:.1f} s later (2 CPU burners)")


def torchrun(*a):
    return [*private_network(), sys.executable, "-m", "torch.distributed.run", *a]


def test_torchrun_restarts_a_killed_worker_and_the_run_continues(tiny_data, tmp_path):
    out = tmp_path / "run"
    agent = subprocess.Popen(
        torchrun("--standalone", "--nproc_per_node=1", "--max-restarts=1", "-m", "flair_cli",
                 *args(tiny_data, out, "--resume", "auto")),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(out / "checkpoints" / "step-00000010.pt", agent)
    worker = next(int(line.split()[0]) for line in subprocess.run(
        ["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout.splitlines()
        if "flair_cli train" in line and str(out) in line and "torch.distributed.run" not in line
        # this test's worker, not any training on the machine
        and "unshare" not in line and "bash -c" not in line)
    os.kill(worker, signal.SIGKILL)
    _, stderr = agent.communicate(timeout=600)
    assert agent.returncode == 0, stderr[-2000:]
    assert (out / "checkpoints" / f"step-{STEPS:08d}.pt").is_file()
    assert steps_logged(out) == list(range(1, STEPS + 1))


def test_two_nodes_train_together_over_c10d_rendezvous(tiny_data, tmp_path):
    out = tmp_path / "run"
    port = free_port()
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
            "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=flair-test"]
    train = ["-m", "flair_cli", *args(tiny_data, out, "--set", "train.epochs=1", "--set",
                                           "train.steps_per_epoch=6", "--set", "loader.workers=1")]
    quoted = lambda xs: " ".join(f"'{x}'" for x in xs)
    script = (f"{quoted(node + ['--node_rank=0'] + train)} & first=$!; "
              f"{quoted(node + ['--node_rank=1'] + train)}; second=$?; "
              "wait $first; exit $(( $? | second ))")
    wrapper = private_network()
    command = ([*wrapper[:-2], f"ip link set lo up 2>/dev/null; {script}"] if wrapper
               else ["bash", "-c", script])
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert steps_logged(out) == list(range(1, 7))
    config = (out / "config.yaml").read_text()
    assert "micro-32" in config
    assert (out / "checkpoints" / "step-00000006.pt").is_file()
