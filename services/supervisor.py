"""Supervision of local service processes, all on 127.0.0.1.

Each process runs detached in its own session, so its pid is also its process-group id and one killpg stops
it together with its workers. A process is recorded as {"pid", "started"}: the start time tells a live
service from an unrelated process that reused its pid. State files are JSON, mode 0600, since they may hold
database URIs or keys.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

HOST = "127.0.0.1"
STOP_TIMEOUT = 30  # seconds between SIGTERM and SIGKILL
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


class ServiceError(RuntimeError):
    """A one-line, user-facing reason why a service could not be started or stopped."""


def spawn(cmd: list[str], log: Path, env: dict, cwd: Path) -> dict:
    """Start `cmd` detached, appending its output to `log`; returns the record to keep for `terminate`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
        out.flush()
        # umask 077: whatever the service writes (databases, objects, logs) is its owner's alone
        pid = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True, umask=0o077).pid
    return {"pid": pid, "started": _stat(pid)[19]}


def wait_until(healthy: Callable[[], bool], proc: dict, label: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not healthy():
        if not members(proc):
            raise ServiceError(f"{label} exited during start-up; see {log}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{label} did not pass its health check within {timeout} s; see {log}")
        time.sleep(0.25)


def answers(url: str, any_reply: bool = False) -> bool:
    """Whether `url` answers 200 (with `any_reply`, any HTTP status)."""
    try:
        with _HTTP.open(url, timeout=3) as reply:
            return reply.status == 200
    except urllib.error.HTTPError:
        return any_reply
    except (OSError, http.client.HTTPException):  # refused, reset, timed out, half-started: not (yet) up
        return False


def free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is not "in use"
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


# Not the `random` module's generator: a training in the same process seeds it, and every platform started
# after it would draw the same sequence of ports.
_PORTS = random.SystemRandom()


def pick_port(taken: set[int], offsets: tuple[int, ...] = (0,)) -> int:
    """A free port, not in `taken`, with port + each offset also free and not taken. Below the ephemeral
    range, so outgoing connections don't take it between now and the server's bind."""
    while True:
        port = _PORTS.randint(20000, 32767)
        wanted = {port + offset for offset in offsets}
        if wanted.isdisjoint(taken) and all(map(free, wanted)):
            return port


def members(proc: dict) -> list[int]:
    """The live processes of a recorded process group; none once its leader's pid was reused."""
    pid = proc["pid"]
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if we started it, or it lingers as a zombie that looks alive
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        except OSError:  # exited while we looked
            continue
        if fields and int(fields[2]) == pid and fields[0] != "Z":
            if int(entry.name) == pid and fields[19] != proc.get("started"):
                return []  # the pid was reused, or the record predates start times: never signal it
            found.append(int(entry.name))
    return found


def terminate(proc: dict, label: str, first: signal.Signals = signal.SIGTERM) -> bool:
    """Stop a recorded process group: `first` (SIGTERM), then SIGKILL. False if it was not running."""
    if not members(proc):  # checked first: never signal a group whose pid now belongs to someone else
        return False
    for sig, wait in ((first, STOP_TIMEOUT), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc["pid"], sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not members(proc):
                return True
            time.sleep(0.1)
    raise ServiceError(f"{label} (process group {proc['pid']}) survived SIGKILL")


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save(path: Path, **changes) -> None:
    write_private(path, {**load(path), **changes})


def make_private(root: Path, keep: tuple[Path, ...] = (), traverse: bool = False) -> None:
    """`root` 0700 (0711 with `traverse`: a service running as another user, PostgreSQL's, must pass through
    to its own folder) and everything under it owner-only: files 0600, folders 0700; the `keep` folders (that
    other user's, which it guards itself) are left alone. Symbolic links are not followed."""
    root.chmod(0o711 if traverse else 0o700)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if (here / d).resolve() not in keep and not (here / d).is_symlink()]
        for name in dirs:
            (here / name).chmod(0o700)
        for name in files:
            if not (here / name).is_symlink():
                (here / name).chmod(0o600)


def write_private(path: Path, data: dict) -> None:
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(path.with_suffix(".tmp"), path)


def _stat(pid: int) -> list[str]:
    """Fields 3.. of /proc/PID/stat (state, ppid, pgrp, ..., start time at index 19)."""
    return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
