"""Helpers for tests that start processes: private network namespaces and free loopback ports."""

import os
import shutil
import socket
import subprocess


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
