"""Helpers for tests that start processes: private network namespaces and free loopback ports."""

import ipaddress
import os
import shutil
import socket
import subprocess
from pathlib import Path


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
                raw = bytes.fromhex(address)  # the kernel prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.setdefault(int(port, 16), set()).add(str(ipaddress.ip_address(words)))
    return found
