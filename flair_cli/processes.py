"""Process hygiene for `flair` and whatever launches it: no training or evaluation outlives the process that
started it, on an idle or a loaded machine.

Two mechanisms, each covering the other's gap:
* `run_tree` (used by the flows' tasks) starts a command in its own session and, when the task is interrupted
  (a termination signal, a Prefect cancel, any exception), stops everything below it: SIGTERM to every
  descendant's process group — torchrun puts each worker in a session of its own, out of reach of one group
  kill — then SIGKILL to whatever is left after a grace period;
* `die_with_parent` (Linux's parent-death signal): a child whose launcher is killed outright, with no chance
  to clean up, gets a signal from the kernel. The flows' children get SIGTERM (torchrun then stops its
  workers); torchrun's workers get SIGKILL, since no agent is left to coordinate them and every run file is
  written whole or not at all (`flair_core.fileio`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flair_core.lifetime import die_with_parent

GRACE_SECONDS = 15  # between SIGTERM and SIGKILL: a training step under load, then its checkpoint


def descendants(root: int) -> list[int]:
    """Every live process below `root` (children, theirs, ...), from /proc, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_tree(process: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM to `process`, its descendants and their process groups; SIGKILL to what is left after
    `grace`."""
    tree = [process.pid, *descendants(process.pid)]  # read before anything dies and is re-parented away
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if pid == process.pid or os.getpgid(pid) == pid:  # a group leader: torchrun, each worker
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            process.poll()  # reap our own child
            if not any(alive(pid) for pid in tree):
                return
            time.sleep(0.2)


def run_tree(command: list[str], cwd: Path, env: dict,
             grace: float = GRACE_SECONDS) -> subprocess.CompletedProcess:
    """subprocess.run(command, capture_output=True, text=True) that never leaves a process behind: the command
    runs in its own session, dies with this process (SIGTERM), and an interrupted wait stops its whole
    tree."""
    # The command starts through this module, which asks for the parent-death signal and then execs it (the
    # request survives exec): safer than a preexec_fn in a threaded parent such as a Prefect flow run.
    launcher = [sys.executable, "-m", "flair_cli.processes", "SIGTERM", "--", *command]
    process = subprocess.Popen(launcher, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate()
    except BaseException:  # a termination signal, a cancel, KeyboardInterrupt: nothing may outlive the task
        stop_tree(process, grace)
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def main(argv: list[str]) -> None:
    """python -m flair_cli.processes SIGNAL -- COMMAND...: run COMMAND, which gets SIGNAL when our parent
    exits."""
    sig, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit("usage: python -m flair_cli.processes SIGNAL -- COMMAND [ARG...]")
    die_with_parent(signal.Signals[sig])
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
