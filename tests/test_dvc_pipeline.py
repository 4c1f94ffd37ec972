"""The DVC pipeline end to end, in a scratch git copy of the repo on the tiny preset: params/pipeline.yaml
read over params/cpu.yaml (dvc.yaml's `override_file` variable).

`dvc repro` runs prepare, 4 trainings, 20 evaluations and compare; a second `dvc repro` does nothing and is
quick; metrics, params and plots commands work; `dvc exp run -S` runs an experiment; `dvc push` to an S3
endpoint (moto's server, private to this test) and `dvc pull` in a fresh `git clone` restore data and
checkpoints with a clean `dvc status`. Timings go to test-artifacts/dvc_pipeline_timings.json.

The tests share one reproduced copy (the `repo` fixture) and leave it as they found it, so any of them runs
alone or in any order; the experiment, which rewrites its workspace, runs on a copy of that copy.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers.paths import ARTIFACTS, BIN, REPO

pytestmark = pytest.mark.integration

ALL_METHODS = ("flair", "clip", "filip", "dreamlip")  # dvc.yaml's `methods`
# The copy runs two of them: every method's stages come from the same foreach/matrix templates, and each
# method more costs a training and five evaluations (~40 s). FLAIR and CLIP cover both text views
# (sub-captions, long).
METHODS = ("flair", "clip")
BENCHMARKS = ("builtin_fine_grained", "builtin_long", "builtin_standard", "builtin_segmentation",
              "builtin_classification")
# What a pipeline needs from the repo (tests, docs and other folders are not read by any stage).
COPY = ("flair_core", "flair_cli", "params", "dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore",
        ".gitignore", "pyproject.toml")
TINY = "params/pipeline.yaml"  # the override the copy's stages read after params/cpu.yaml
NOOP_SECONDS = 8.0  # measured 1.5-3.6 s for 26 stages; DVC start-up is most of it
TIMINGS: dict[str, float] = {}


def environment(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the stages call `flair`
        PYTHONPATH=str(root),  # the copy's flair_core, not the editable install's
        DVC_NO_ANALYTICS="1",
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
    )
    return env


def run(root: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), check=False, cwd=root, env=environment(root), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n"
                                    f"{result.stderr[-4000:]}")
    return result


def dvc(root: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return run(root, str(BIN / "dvc"), *args, **kw)


def git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run(root, "git", *args)


def use_methods(root: Path, methods: tuple[str, ...]) -> None:
    """Keep only `methods` in the copy's dvc.yaml: its `methods` variable, the compare stage's loss inputs and
    the loss plot's lines."""
    path = root / "dvc.yaml"
    text = path.read_text()
    for default in (f"  - methods: [{', '.join(ALL_METHODS)}]\n",
                    f"        reports/train_loss.csv: [{', '.join(ALL_METHODS)}]\n"):
        assert text.count(default) == 1, f"dvc.yaml no longer has {default!r}"
        text = text.replace(default, default.replace(", ".join(ALL_METHODS), ", ".join(methods)))
    for method in set(ALL_METHODS) - set(methods):
        line = f"      - runs/{method}/metrics.jsonl\n"
        assert text.count(line) == 1, line
        text = text.replace(line, "")
    path.write_text(text)


def use_override(root: Path, override: str) -> None:
    """Set dvc.yaml's `override_file` variable in the copy: DVC takes no variables on the command line, so a
    run passes one by its value in dvc.yaml (every stage's cmd and `params:` follow it)."""
    path = root / "dvc.yaml"
    default = "    override_file: params/cpu.yaml\n"
    text = path.read_text()
    assert text.count(default) == 1, "dvc.yaml's vars no longer set override_file to params/cpu.yaml"
    path.write_text(text.replace(default, f"    override_file: {override}\n"))


def timed(name: str, fn, *args, **kw):
    start = time.perf_counter()
    result = fn(*args, **kw)
    TIMINGS[name] = round(time.perf_counter() - start, 2)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dvc_pipeline_timings.json").write_text(json.dumps(TIMINGS, indent=1) + "\n")
    return result


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A committed copy at the tiny preset and two methods, after one full `dvc repro` (outputs committed
    too)."""
    root = tmp_path_factory.mktemp("dvc") / "repo"
    for item in COPY:
        source, target = REPO / item, root / item
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    use_override(root, TINY)
    use_methods(root, METHODS)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "pipeline at the tiny preset")
    result = timed("repro_seconds", dvc, root, "repro")
    (root.parent / "repro.log").write_text(result.stdout)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "pipeline outputs")
    return root


def test_repro_runs_every_stage(repo):
    log = (repo.parent / "repro.log").read_text()
    stages = ["prepare", *(f"train@{m}" for m in METHODS),
              *(f"evaluate@{m}" for m in METHODS), "compare"]
    for stage in stages:
        assert f"Running stage '{stage}'" in log, stage
    assert f"--params params/cpu.yaml --params {TINY}" in log  # both files, the override last
    for m in METHODS:
        assert list((repo / "runs" / m / "checkpoints").glob("step-*.pt"))
        assert "model: micro-32" in (repo / "runs" / m / "config.yaml").read_text()  # the tiny preset's
        for b in BENCHMARKS:
            assert json.loads((repo / "eval" / m / f"{b}.json").read_text())
    table = json.loads((repo / "reports" / "compare.json").read_text())
    assert list(table) == list(METHODS)
    assert "builtin_fine_grained/t2i_r1" in table["flair"] and "builtin_classification/top1" in table["clip"]
    for name in ("compare.md", "compare.csv", "train_loss.csv"):
        assert (repo / "reports" / name).stat().st_size > 0
    assert git(repo, "status", "--porcelain").stdout == ""  # every output is either in git or in DVC


def test_second_repro_is_a_quick_noop(repo):
    result = timed("noop_repro_seconds", dvc, repo, "repro")
    assert "Running stage" not in result.stdout
    assert "Data and pipelines are up to date." in result.stdout
    assert TIMINGS["noop_repro_seconds"] < NOOP_SECONDS, TIMINGS
    timed("status_seconds", dvc, repo, "status")


def test_metrics_and_plots_are_declared(repo):
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    metrics = shown[""]["data"]
    compare = metrics["reports/compare.json"]["data"]
    assert set(compare) == set(METHODS)
    assert isinstance(compare["flair"]["builtin_segmentation/miou"], float)
    assert "eval/clip/builtin_long.json" in metrics
    # own mode
    assert "retrieval/builtin_long/global/t2i_r1" in metrics["eval/clip/builtin_long.json"]["data"]

    plots = json.loads(dvc(repo, "plots", "show", "--json").stdout)
    assert not plots.get("errors"), plots.get("errors")
    declared = [name for plot in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"] for name in plot]
    assert sorted(plots["data"]) == sorted(declared) and "train_loss" in declared
    for name in declared:  # the bar charts: one bar per method; the loss: one point per method and step
        [plot] = plots["data"][name]
        values = plot["content"]["data"]["values"]
        assert len(values) == (len(METHODS) if name != "train_loss" else 8 * len(METHODS)), (name, values)
    out = repo.parent / "plots"
    dvc(repo, "plots", "show", "-o", str(out))
    assert (out / "index.html").is_file()


def test_params_diff_after_an_edit(repo):
    """An edit in either file shows in `params diff` and makes stale only the stages that read the key."""
    edits = {repo / "params" / "cpu.yaml": ("weight_decay: 0.1", "weight_decay: 0.2"),  # not overridden
             repo / TINY: ("lr: 1.0e-3", "lr: 2.0e-3")}
    originals = {path: path.read_text() for path in edits}
    try:
        for path, (old, new) in edits.items():
            assert old in originals[path]
            path.write_text(originals[path].replace(old, new, 1))
        diff = json.loads(dvc(repo, "params", "diff", "--json").stdout)
        assert {k: (v["old"], v["new"]) for k, v in diff["params/cpu.yaml"].items()} == {
            "train.weight_decay": (0.1, 0.2)}
        assert {k: (v["old"], v["new"]) for k, v in diff[TINY].items()} == {"train.lr": (0.001, 0.002)}
        status = dvc(repo, "status").stdout
        assert "train@flair" in status and "prepare" not in status  # only what reads train.* is stale
    finally:
        for path, text in originals.items():
            path.write_text(text)
    assert json.loads(dvc(repo, "params", "diff", "--json").stdout) == {}


@pytest.fixture
def s3_endpoint():
    """moto's S3 server on a free loopback port (in memory; private to this test), with a `dvc` bucket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        import boto3

        boto3.client("s3", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket="dvc")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_push_then_pull_in_a_fresh_clone(repo, s3_endpoint):
    dvc(repo, "remote", "modify", "--local", "storage", "endpointurl", s3_endpoint)
    timed("push_seconds", dvc, repo, "push")

    clone = repo.parent / "clone"
    run(repo.parent, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "data" / "builtin").exists()
    dvc(clone, "remote", "modify", "--local", "storage", "endpointurl", s3_endpoint)
    timed("pull_seconds", dvc, clone, "pull")
    assert (clone / "data" / "builtin" / "meta.json").is_file()
    assert sorted(p.name for p in (clone / "data" / "builtin" / "train").glob("*.tar")) == sorted(
        p.name for p in (repo / "data" / "builtin" / "train").glob("*.tar"))
    for m in METHODS:
        [checkpoint] = list((clone / "runs" / m / "checkpoints").glob("step-*.pt"))
        assert checkpoint.read_bytes() == (repo / "runs" / m / "checkpoints" / checkpoint.name).read_bytes()
    status = dvc(clone, "status").stdout
    assert "Data and pipelines are up to date." in status, status


def test_experiment_with_a_changed_param(repo, tmp_path):
    # `dvc exp run` applies the experiment to the workspace (params, dvc.lock, outputs): on the shared repo it
    # would fail the clean-status, params-diff and push/pull checks of any test run after it.
    repo = shutil.copytree(repo, tmp_path / "repo", symlinks=True,
                           ignore=lambda folder, names: ["tmp"] if folder.endswith("/.dvc") else [])
    before = json.loads((repo / "reports" / "compare.json").read_text())
    # FLAIR's K lives in its recipe (a recipe beats the top-level `sampling` of its own file)
    result = timed("exp_run_seconds", dvc, repo, "exp", "run", "-S",
                   "params/cpu.yaml:recipes.flair.sampling.k=2")
    assert "Running stage 'train@flair'" in result.stdout
    assert "Running stage 'prepare'" not in result.stdout  # data does not read sampling.k
    recipes = yaml.safe_load((repo / "params" / "cpu.yaml").read_text())["recipes"]
    assert recipes["flair"]["sampling"]["k"] == 2
    assert yaml.safe_load((repo / "runs" / "flair" / "config.yaml").read_text())["sampling"]["k"] == 2
    exps = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    workspace = next(e for e in exps if e["rev"] == "workspace")
    assert workspace["data"]["params"]["params/cpu.yaml"]["data"]["recipes"]["flair"]["sampling"]["k"] == 2
    baseline = next(e for e in exps if e["rev"] != "workspace")
    assert baseline["experiments"], "the experiment is listed under its baseline commit"
    diff = json.loads(dvc(repo, "metrics", "diff", "--json").stdout)  # workspace (experiment) vs HEAD
    assert "reports/compare.json" in diff
    assert json.loads((repo / "reports" / "compare.json").read_text()).keys() == before.keys()
