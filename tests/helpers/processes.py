"""Helpers for tests that start processes: private network namespaces and free loopback ports."""

import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from flair_cli.processes import alive


def private_network() -> list[str]:
    """A command prefix running its command where only loopback exists (torchrun's rendezvous store
    listens on every interface). Empty when namespaces are not available (not root, no unshare)."""
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["unshare", "-n", "bash", "-c", 'ip link set lo up && exec "$@"', "netns"]
    return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listeners() -> dict[int, set[str]]:
    """Listening TCP port -> the addresses it is bound to (IPv4 and IPv6), from /proc/net/tcp{,6}."""
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            if state == "0A":  # LISTEN
                address, port = local.split(":")
                # the kernel prints each 32-bit word in host (little-endian) order
                raw = bytes.fromhex(address)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.setdefault(int(port, 16), set()).add(str(ipaddress.ip_address(words)))
    return found


def _socket_inodes(pids: list[int]) -> set[str]:
    """The inodes of the sockets the processes `pids` hold open (/proc/PID/fd)."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):  # exited while we looked
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):  # closed while we looked
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    return inodes


def listening_ports(pids: list[int]) -> set[int]:
    """TCP ports the processes `pids` listen on: their sockets found among the listeners of
    /proc/net/tcp{,6} by inode. Every port, including ones nobody told us about."""
    inodes, ports = _socket_inodes(pids), set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN; the inode column
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _belongs_to(pid: Path, folder: str) -> bool:
    """Whether the process runs in `folder` or names it in its command line or environment."""
    with contextlib.suppress(OSError):  # exited while we looked, or not ours to read
        if os.readlink(pid / "cwd").startswith(folder):
            return True
    for part in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            if folder.encode() in (pid / part).read_bytes():
                return True
    return False


def ports_listened_from(folder: Path) -> set[int]:
    """TCP ports listened on by processes that belong to `folder` (a services root): what is still ours, not
    a port some other test's server took after ours let it go (ports are picked at random, so a number can
    come back within seconds on a busy machine)."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _belongs_to(p, str(folder))]
    return listening_ports(pids)


def unix_socket_paths(pids: list[int]) -> set[str]:
    """Paths of the unix sockets the processes `pids` hold (/proc/net/unix by inode): theirs, not a file some
    other process left behind under the same name."""
    inodes = _socket_inodes(pids)
    rows = (row.split() for row in Path("/proc/net/unix").read_text().splitlines()[1:])
    return {fields[7] for fields in rows if len(fields) > 7 and fields[6] in inodes}


@contextlib.contextmanager
def cpu_burners(count: int = 2):
    """`count` processes spinning on a core each while the block runs: the loaded machine a stop must also
    work on (a slow step, a late signal handler, a grace period running out)."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield burners
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def processes_naming(text: str) -> list[str]:
    """Live processes whose command line contains `text` (e.g. a run folder): pid and command."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if not alive(int(proc.name)):  # a zombie waiting to be reaped
            continue
        if text in command:
            found.append(f"{proc.name} {command[:160]}")
    return found


def wait_until_gone(text: str, timeout: float) -> tuple[float, list[str]]:
    """Seconds until no process names `text` (or `timeout`), and what was left then."""
    start = time.monotonic()
    while (left := processes_naming(text)) and time.monotonic() - start < timeout:
        time.sleep(0.1)
    return time.monotonic() - start, left
