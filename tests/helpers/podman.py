"""Whether podman can run containers here, asked once for the container tests and their background build."""

import shutil
import subprocess


def podman_problem() -> str | None:
    """None when podman runs containers; otherwise why not, in one line."""
    if shutil.which("podman") is None:
        return "podman is not installed (infra/containers.sh setup installs it)"
    info = subprocess.run(["podman", "info"], capture_output=True, text=True, check=False)
    if info.returncode:
        return f"podman cannot run containers here: {(info.stderr.strip().splitlines() or ['?'])[-1]}"
    return None
