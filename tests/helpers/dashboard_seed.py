"""A seeded MLflow store (SQLite, file artifacts) and Optuna study for the dashboard's tests."""

from pathlib import Path

import optuna

FINE = "retrieval/builtin_fine_grained/{mode}/t2i_r1"
SEEDED = {  # method -> (fine-grained t2i R@1, long t2i R@1) in its own mode
    "flair": (12.5, 30.0), "clip": (10.0, 35.0), "filip": (11.0, 20.0), "dreamlip": (9.0, 40.0)}
MODE = {"flair": "flair", "clip": "global", "dreamlip": "global", "filip": "filip"}
FLAIR_NOISE = {"_ci_low": 10.94, "_ci_high": 14.06, "_chance": 1.56}  # FLAIR's fine-grained t2i R@1 only
LEVEL = {"flair": "easy", "clip": "hard", "filip": "hard", "dreamlip": "hard"}  # built-in data level per run
# Per-query records of the fine-grained set (FILIP's run kept none): 200 text queries, four per cluster of 50;
# a method finds the first query of clusters 0 .. HITS[method] - 1 at rank 0, so each record reproduces its
# logged R@1 and FLAIR's hits are a superset of the others' (+2.5 points against CLIP, in 5 clusters).
# Diagnostics by fact type (metric after the mode -> value, 95 % low, high, chance); FILIP and DreamLIP stand
# for runs logged before them. FLAIR's relation R@1 and shape pairs hold chance in their interval.
DIAGNOSTICS = {
    "flair": {"t2i_r1/by_fact/object": (20.0, 15.0, 25.0, 1.56),
              "t2i_r1/by_fact/relation": (3.0, 1.0, 5.0, 1.56),
              "minimal_pair/colour": (80.0, 70.0, 90.0, 50.0),
              "minimal_pair/shape": (52.0, 45.0, 59.0, 50.0)},
    "clip": {"minimal_pair": (55.0, 51.0, 59.0, 50.0)}}
QUERIES, HITS = 200, {"flair": 25, "clip": 20, "dreamlip": 18}
# Zero-shot classification top-1 (value, 95 % low, high, chance, majority class) of FLAIR and CLIP: FLAIR's
# interval holds chance (as on the built-in set, where every method is at chance), CLIP's lies above it.
CLASSIFICATION = "classification/builtin_classification/zeroshot/top1"
TOP1 = {"flair": (21.0, 17.0, 25.0, 20.0, 24.0), "clip": (30.0, 26.0, 34.0, 20.0, 24.0)}


def fine_grained_records(method: str) -> dict:
    import numpy as np

    cluster, slot = np.arange(QUERIES) // 4, np.arange(QUERIES) % 4
    rank = np.where((slot == 0) & (cluster < HITS[method]), 0, 7)
    return {"t2i/query": np.arange(QUERIES), "t2i/cluster": np.arange(QUERIES) // 4,
            f"{MODE[method]}/t2i/rank": rank}


def seed_platform(root: Path, tiny_data: Path) -> dict:
    """An MLflow store with one run per method, two registered FLAIR versions (champion, challenger) with a
    real checkpoint, and an Optuna study with complete, pruned and failed trials."""
    from mlflow import MlflowClient

    from flair_core.evaluation.records import records_path, save_records
    from flair_core.run_config import load_run_config
    from flair_core.training.loop import Trainer
    from flair_lab.tracking import decide

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("flair-lab", artifact_location=(root / "artifacts").as_uri())
    overrides = ["train.model=micro-32", f"train.shards={tiny_data / 'train'}", "train.batch_size=8",
                 "train.steps_per_epoch=2", "loader.workers=0", "train.warmup_steps=1"]
    Trainer(load_run_config([], overrides), root / "run").fit()
    checkpoint = next((root / "run" / "checkpoints").glob("*.pt"))
    # A CLIP checkpoint too: Inspect puts a second registered model (a baseline, no attention) beside FLAIR.
    Trainer(load_run_config([], [*overrides, "method.name=clip"]), root / "run-clip").fit()
    clip_checkpoint = next((root / "run-clip" / "checkpoints").glob("*.pt"))
    run_ids = {}
    for method, (fine, long) in SEEDED.items():
        run = client.create_run(experiment, run_name=f"{method}-seeded", tags={
            "method": method, "preset": "micro-32", "data_hash": "d0d0d0d0d0d0beef",
            "data_level": LEVEL[method], "git_commit": "c0ffee"})
        mode = MODE[method]
        for key, value in {FINE.format(mode=mode): fine, f"retrieval/builtin_long/{mode}/t2i_r1": long,
                           f"retrieval/builtin_standard/{mode}/t2i_r1": fine + 1,
                           f"retrieval/builtin_standard/{mode}/i2t_r1": fine + 2}.items():
            client.log_metric(run.info.run_id, key, value)
        if method == "flair":  # the others stand for runs logged before intervals existed
            for suffix, value in FLAIR_NOISE.items():
                client.log_metric(run.info.run_id, FINE.format(mode=mode) + suffix, value)
        if method in TOP1:
            for suffix, value in zip(("", "_ci_low", "_ci_high", "_chance", "_majority"), TOP1[method],
                                     strict=True):
                client.log_metric(run.info.run_id, CLASSIFICATION + suffix, value)
        for name, values in DIAGNOSTICS.get(method, {}).items():
            key = f"retrieval/builtin_fine_grained/{mode}/{name}"
            for suffix, value in zip(("", "_ci_low", "_ci_high", "_chance"), values, strict=True):
                client.log_metric(run.info.run_id, key + suffix, value)
        for key, value in {"train.model": "micro-32", "data.train_images": "512", "data.image_size": "32",
                           "train.epochs": "1", "train.batch_size": "8"}.items():
            client.log_param(run.info.run_id, key, value)
        run_ids[method] = run.info.run_id
        if method in HITS:
            path = records_path(root / "records" / method, "builtin_fine_grained")
            path.parent.mkdir(parents=True)
            save_records(path, fine_grained_records(method))
            client.log_artifact(run.info.run_id, str(path), "eval")
    client.log_artifact(run_ids["flair"], str(checkpoint), "checkpoint")
    client.create_registered_model("flair-lab-flair")
    # The promotion rule's own reasons: v1 is the first version, v2 gains less than its interval's width.
    primary = FINE.format(mode="flair")
    first = client.get_run(run_ids["flair"]).data.metrics
    second = {primary: 13.0, primary + "_ci_low": 11.2, primary + "_ci_high": 14.8, primary + "_chance": 1.56}
    for version, (alias, reason) in enumerate([decide(first, None, primary, 2.0),
                                               decide(second, first, primary, 2.0)], 1):
        client.create_model_version("flair-lab-flair", f"runs:/{run_ids['flair']}/model", run_ids["flair"],
                                    tags={"git_commit": f"c0ffee{version}", "data_hash": "d0d0d0d0d0d0beef",
                                          "data_level": LEVEL["flair"], "preset": "micro-32",
                                          "method": "flair"},
                                    description=f"{alias}: {reason}")
        client.set_registered_model_alias("flair-lab-flair", alias, str(version))
    # CLIP's version carries no method tag (as versions registered before the flow set it): its run's tag says
    client.log_artifact(run_ids["clip"], str(clip_checkpoint), "checkpoint")
    client.create_registered_model("flair-lab-clip")
    client.create_model_version("flair-lab-clip", f"runs:/{run_ids['clip']}/model", run_ids["clip"],
                                tags={"git_commit": "c0ffee3", "data_hash": "d0d0d0d0d0d0beef",
                                      "data_level": LEVEL["clip"], "preset": "micro-32"},
                                description="champion: first version")
    client.set_registered_model_alias("flair-lab-clip", "champion", "1")

    for run_id in run_ids.values():  # finished runs, as the flow leaves them
        client.set_terminated(run_id)
    seed_live_runs(client, experiment, root / "run" / "config.yaml", root / "runs")

    storage = f"sqlite:///{root / 'optuna.db'}"
    study = optuna.create_study(study_name="seeded-sweep", storage=storage, direction="maximize")
    metric = FINE.format(mode="flair")
    study.set_user_attr("signature", {"space": {"sampling.k": {}, "method.settings.tcs_weight": {}},
                                      "objectives": [{"metric": metric, "direction": "maximize"}]})
    distributions = {"sampling.k": optuna.distributions.IntDistribution(1, 10),
                     "method.settings.tcs_weight": optuna.distributions.FloatDistribution(0, 1)}
    for k in range(1, 8):  # the objective follows K
        study.add_trial(optuna.trial.create_trial(
            value=k * 1.5, params={"sampling.k": k, "method.settings.tcs_weight": k / 10},
            distributions=distributions, intermediate_values={16: k * 1.0}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={
        "sampling.k": 9, "method.settings.tcs_weight": 0.9}, distributions=distributions,
        intermediate_values={16: 0.1}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return {"uri": uri, "storage": storage, "data": tiny_data, "run_ids": run_ids, "runs_root": root / "runs"}


# Live runs: a training at step 12 of 20 (0.5 s and 16 samples/s a step, so 4 s to go), validated at steps 5
# and 10, as a run folder the flow trains into and as a RUNNING MLflow run (what MLflow would hold if the
# training logged as it went); a finished CLIP training whose folder a Prefect flow run evaluated; a stopped
# one. None of them carries the `method` tag, so Compare (runs of a method) does not list them.
LIVE = {"run_key": "live0123456789abcdef", "step": 12, "total": 20, "seconds": 0.5, "samples_per_s": 16.0,
        "validated": {5: 2.0, 10: 4.0}}
DONE = {"run_key": "done0123456789abcdef", "flow_run": "0b4c7f1e-5d2a-4c1e-9a61-3f0d2b7e9c11"}
VALIDATION = "val/retrieval/builtin_fine_grained/flair/t2i_r1"


def loss_at(step: int) -> float:
    return 5.0 - 0.2 * step


def seed_live_runs(client, experiment: str, config_file: Path, runs_root: Path) -> None:
    import json
    import os
    import time

    import yaml

    def folder(path: Path, method: str, last: int, validated: dict[int, float]) -> Path:
        config = yaml.safe_load(config_file.read_text())
        config["method"]["name"] = method
        config["train"] |= {"epochs": 2, "steps_per_epoch": 10}
        path.mkdir(parents=True)
        (path / "config.yaml").write_text(yaml.safe_dump(config))
        steps = [{"step": s, "epoch": s / 10, "loss/total": loss_at(s), "loss/contrastive": loss_at(s) - 1,
                  "samples_per_s": LIVE["samples_per_s"], "seconds": LIVE["seconds"]}
                 for s in range(1, last + 1)]
        (path / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
        (path / "val_metrics.jsonl").write_text("".join(json.dumps({"step": s, VALIDATION[4:]: v}) + "\n"
                                                        for s, v in validated.items()))
        return path

    folder(runs_root / "flows" / f"flair-{LIVE['run_key'][:12]}", "flair", LIVE["step"], LIVE["validated"])
    done = folder(runs_root / "flows" / f"clip-{DONE['run_key'][:12]}", "clip", LIVE["total"], {})
    (done / "eval" / DONE["flow_run"]).mkdir(parents=True)
    stopped = folder(runs_root / "study" / "0123abcd", "filip", 5, {})
    an_hour_ago = time.time() - 3600
    for path in (stopped / "metrics.jsonl", done / "metrics.jsonl"):
        os.utime(path, (an_hour_ago, an_hour_ago))

    from mlflow.entities import Metric

    def mlflow_run(name: str, method: str, run_key: str, last: int, validated: dict[int, float]) -> str:
        run = client.create_run(experiment, run_name=name, tags={"run_key": run_key})
        for key, value in {"method.name": method, "train.epochs": "2", "train.steps_per_epoch": "10",
                           "train.batch_size": "8"}.items():
            client.log_param(run.info.run_id, key, value)
        history = [Metric(k, v, 0, s) for s in range(1, last + 1)
                   for k, v in {"loss/total": loss_at(s), "samples_per_s": LIVE["samples_per_s"],
                                "seconds": LIVE["seconds"]}.items()]
        history += [Metric(VALIDATION, v, 0, s) for s, v in validated.items()]
        client.log_batch(run.info.run_id, metrics=history)
        return run.info.run_id

    client.set_terminated(mlflow_run("clip-done", "clip", DONE["run_key"], LIVE["total"], {}))
    mlflow_run("flair-live", "flair", LIVE["run_key"], LIVE["step"], LIVE["validated"])  # left RUNNING
