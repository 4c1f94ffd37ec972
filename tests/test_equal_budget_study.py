"""The equal-budget study end to end (`--quick`): a real Prefect server and MLflow, runs cached by their
resolved config (a duplicate configuration is trained once), a nested MLflow run per configuration and seed,
the report with its verdicts; a second run redoes nothing."""

import json
import subprocess
import sys
import time

import pytest

from tests.helpers.scratch_repo import scratch_platform

pytestmark = pytest.mark.integration


def test_quick_study_runs_caches_logs_and_reports(tmp_path_factory):
    from mlflow import MlflowClient

    with scratch_platform(tmp_path_factory.mktemp("study"), {}) as (repo, env):
        command = [sys.executable, "-m", "flows.equal_budget_study", "run", "--quick"]
        start = time.time()
        first = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, check=False)
        first_seconds = time.time() - start
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        result = json.loads(first.stdout[first.stdout.index("{"):])
        # "K 5" is FLAIR's recipe: one training
        assert result["runs"] == 4 and result["unique_runs"] == 3

        client = MlflowClient()
        experiment = client.get_experiment_by_name("flair-lab-studies")
        runs = client.search_runs([experiment.experiment_id], "tags.study_role = 'run'")
        assert sorted(r.data.tags["study_label"] for r in runs) == ["K 5", "MPS only", "clip", "flair"]
        parent = client.search_runs([experiment.experiment_id], "tags.study_role = 'study'")[0]
        assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs)
        assert all("retrieval/builtin_fine_grained/global/t2i_r1" in r.data.metrics for r in runs)
        flair = next(r for r in runs if r.data.tags["study_label"] == "flair")
        assert client.get_metric_history(flair.info.run_id, "val/retrieval/builtin_fine_grained/flair/t2i_r1")

        report = (repo / "reports" / "study" / "report.md").read_text()
        assert "## Main table" in report and "| flair | " in report and "| clip | " in report
        assert " n=1 " in report
        # the paper's [S] row beside ours
        assert "FLAIR beats CLIP" in report and "32.9 / 1.7 / 27.9" in report
        assert any(verdict in report for verdict in ("**holds**", "**does not hold**", "**within noise**",
                                                     "**not beyond chance**"))
        assert "## Pareto front" in report and "| MPS only |" in report[report.index("## Pareto front"):]
        assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
            "report/report.md", "report/pareto_front.png"}

        start = time.time()
        again = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, check=False)
        assert again.returncode == 0, again.stderr[-3000:]
        assert time.time() - start < first_seconds / 2  # every run cached: nothing retrained or re-evaluated
        assert len(client.search_runs([experiment.experiment_id], "tags.study_role = 'run'")) == 4
