"""Where a secret must never appear: any file of the repo copy (logs, params, reports, git objects, the object
store's data), MLflow params and tags, Prefect flow-run parameters. The files meant to hold secrets
(postgres.json, auth.json) are allowed."""

import base64
import json
import urllib.request
from pathlib import Path


def leaks(secret: str, repo: Path, prefect_api: str,
          allowed: tuple[str, ...] = ("postgres.json", "auth.json"),
          prefect_auth: str | None = None) -> list[str]:
    """`prefect_auth`: the team-mode auth string, when the Prefect server asks for one."""
    from mlflow import MlflowClient

    found = [str(path) for path in repo.rglob("*")
             if path.is_file() and path.name not in allowed and secret.encode() in path.read_bytes()]
    client = MlflowClient()
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            found += [f"MLflow run {run.info.run_id}: {key}" for key, value in
                      {**run.data.params, **run.data.tags}.items() if secret in value]
    headers = {"Content-Type": "application/json"}
    if prefect_auth:
        headers["Authorization"] = "Basic " + base64.b64encode(prefect_auth.encode()).decode()
    request = urllib.request.Request(f"{prefect_api}/flow_runs/filter", data=b"{}", method="POST",
                                     headers=headers)
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as reply:
        found += [f"Prefect flow run {run['name']}: parameters" for run in json.load(reply)
                  if secret in json.dumps(run.get("parameters"))]
    return found
