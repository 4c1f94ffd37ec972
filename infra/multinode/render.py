"""Render the multi-node manifests into what each node runs: its command line and environment.

    .venv/bin/python infra/multinode/render.py k8s|slurm --nodes 2 --procs-per-node 1 \
        --params params/cpu.yaml --global-batch 32 --out runs/2node [--podman localhost/flair-lab]

Prints JSON, one {"host", "argv", "env"} per node. Nothing is re-typed: the PyTorchJob's container command,
arguments and env are read from the YAML, plus the variables the training operator injects for its
elasticPolicy (PET_*: torchrun reads them as its options); the Slurm script is run by bash itself with
`srun` and `scontrol` standing in, so its own preamble computes the batch, the rendezvous host and the
exported variables, and `srun`'s `bash -c` body is what each node runs. A 2-node CPU job differs from the
manifests only in what is substituted here, listed in SUBSTITUTIONS: the params file, the batch, the
processes per node (GPUs there) and the output folder. With --podman IMAGE the nodes run as containers
on one network, each reachable by the host name the manifest gives it (c10d rendezvous, gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RECIPE = "params/vit-b16-cc3m.yaml"
SUBSTITUTIONS = ("params file", "global batch (per-process batch in the PyTorchJob)", "processes per node",
                 "output folder")
OPERATOR_RDZV_PORT = 23456  # the training operator's rendezvous port on worker 0


def render_k8s(nodes: int, procs: int, params: str, global_batch: int, out: str) -> list[dict]:
    job = yaml.safe_load((HERE / "k8s-pytorchjob.yaml").read_text())
    spec = job["spec"]
    worker = spec["pytorchReplicaSpecs"]["Worker"]
    container = worker["template"]["spec"]["containers"][0]
    argv = [str(a) for a in container["command"] + container["args"]]
    replace = {
        f"--nproc_per_node={container['resources']['limits']['nvidia.com/gpu']}": f"--nproc_per_node={procs}",
        RECIPE: params, "runs/flair-cc3m": out}
    batch = next(a for a in argv if a.startswith("train.batch_size="))
    replace[batch] = f"train.batch_size={global_batch // (nodes * procs)}"
    for old in replace:
        if old not in argv:
            raise SystemExit(f"k8s-pytorchjob.yaml no longer has {old!r} in its command line")
    argv = [replace.get(a, a) for a in argv]
    name = job["metadata"]["name"]
    policy = spec["elasticPolicy"]
    env = {e["name"]: str(e["value"]) for e in container.get("env", [])}
    env |= {"PET_NNODES": f"{nodes}:{nodes}", "PET_RDZV_BACKEND": policy["rdzvBackend"],
            "PET_RDZV_ENDPOINT": f"{name}-worker-0:{OPERATOR_RDZV_PORT}", "PET_RDZV_ID": policy["rdzvId"],
            "PET_MAX_RESTARTS": str(policy["maxRestarts"])}
    return [{"host": f"{name}-worker-{rank}", "argv": argv, "env": env} for rank in range(nodes)]


# bash stand-ins for the two Slurm commands the script calls: scontrol lists the job's hosts, srun records
# its command (the `bash -c` body each node runs) and the environment exported to it.
SLURM_STUBS = r"""
scontrol() { for ((i = 0; i < SLURM_NNODES; i++)); do echo "node$i"; done; }
srun() {
  while [[ $1 == --* ]]; do shift; done
  "$RENDER_PYTHON" -c 'import json, os, sys; json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, sys.stdout)' "$@"
}
"""  # noqa: E501 - a shell script run as is; its one long line is a `python -c` program


def render_slurm(nodes: int, procs: int, params: str, global_batch: int, out: str) -> list[dict]:
    script = (HERE / "slurm.sbatch").read_text()
    for old in (RECIPE, "GLOBAL_BATCH=1024"):
        if old not in script:
            raise SystemExit(f"slurm.sbatch no longer has {old!r}")
    script = script.replace(RECIPE, params).replace("GLOBAL_BATCH=1024", f"GLOBAL_BATCH={global_batch}")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "job.sh"
        path.write_text(script.replace("set -euo pipefail\n", "set -euo pipefail\n" + SLURM_STUBS, 1))
        slurm = {"SLURM_SUBMIT_DIR": os.getcwd(), "SLURM_NNODES": str(nodes), "SLURM_JOB_ID": "1",
                 "SLURM_JOB_NODELIST": f"node[0-{nodes - 1}]", "SLURM_GPUS_ON_NODE": str(procs),
                 "FLAIR_PYTHON": "python", "FLAIR_OUT": out}
        clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        result = subprocess.run(["bash", str(path)], env={**clean, **slurm, "RENDER_PYTHON": sys.executable},
                                capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"slurm.sbatch failed under the stand-ins: {result.stderr.strip()[-500:]}")
    launch = json.loads(result.stdout)
    shell = {"RENDER_PYTHON", "PWD", "OLDPWD", "SHLVL", "_", "SLURM_SUBMIT_DIR"}  # bash's own, or the host's
    exported = {k: v for k, v in launch["env"].items() if k not in clean and k not in shell}
    # on a node, Slurm sets SLURM_NODEID and the like; the body reads only SLURM_NNODES and SLURM_JOB_ID
    return [{"host": f"node{rank}", "argv": launch["argv"], "env": {**exported, "SLURM_NODEID": str(rank)}}
            for rank in range(nodes)]


def run_in_podman(nodes: list[dict], image: str, checkout: Path, timeout: float) -> None:
    """Each node as a container on one podman network, named and reachable by its host name, the checkout
    mounted at /app (as the manifests' shared filesystem or volumes); fails with the first failing node's
    log."""
    network = f"flair-multinode-{os.getpid()}"
    subprocess.run(["podman", "network", "create", network], check=True, capture_output=True)
    names = []
    try:
        for node in nodes:
            env = [f"--env={k}={v}" for k, v in {**node["env"], "HOME": "/tmp"}.items()]
            subprocess.run(["podman", "run", "--detach", "--name", node["host"], "--hostname", node["host"],
                            "--network", network, "--user", str(os.getuid()), "--shm-size", "1g",
                            "--volume", f"{checkout}:/app", "--workdir", "/app", *env,
                            "--entrypoint", node["argv"][0], image, *node["argv"][1:]],
                           check=True, capture_output=True)
            names.append(node["host"])
        codes = {name: subprocess.run(["podman", "wait", name], capture_output=True, text=True, check=True,
                                      timeout=timeout).stdout.strip() for name in names}
        failed = [name for name, code in codes.items() if code != "0"]
        if failed:
            log = subprocess.run(["podman", "logs", "--tail", "15", failed[0]], capture_output=True,
                                 text=True, check=False)
            raise SystemExit(f"node {failed[0]} exited with {codes[failed[0]]}:\n{log.stdout}{log.stderr}")
    finally:
        subprocess.run(["podman", "rm", "--force", *names], capture_output=True, check=False)
        subprocess.run(["podman", "network", "rm", "--force", network], capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", choices=["k8s", "slurm"])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--procs-per-node", type=int, default=1, help="GPUs per node in the manifests")
    parser.add_argument("--params", required=True, help="params file replacing " + RECIPE)
    parser.add_argument("--global-batch", type=int, required=True)
    parser.add_argument("--out", required=True, help="run folder replacing the manifests' runs/flair-cc3m")
    parser.add_argument("--podman", metavar="IMAGE", help="run the nodes as containers of IMAGE (the "
                                                          "checkout, the current folder, mounted at /app)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a --podman run may take")
    args = parser.parse_args()
    render = render_k8s if args.manifest == "k8s" else render_slurm
    nodes = render(args.nodes, args.procs_per_node, args.params, args.global_batch, args.out)
    if args.podman:
        run_in_podman(nodes, args.podman, Path.cwd(), args.timeout)
    json.dump(nodes, sys.stdout, indent=1)
    print(f"\n{args.manifest}: {len(nodes)} nodes; substituted: {', '.join(SUBSTITUTIONS)}; node 0 runs "
          f"{shlex.join(nodes[0]['argv'])[:200]}", file=sys.stderr)


if __name__ == "__main__":
    main()
