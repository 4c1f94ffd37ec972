"""The platform under load: 8 pretrain-eval flow runs submitted at once to the served deployment, beside a
sweep whose 4 workers share one Optuna study, against the services on PostgreSQL (free ports, a scratch copy
of the repo on the tiny preset). Nothing may be lost or duplicated: every flow run Completed; one finished
MLflow run per flow run holding each metric of its run folder once per step; one model version per run, with
one first champion; the study's trials exactly those asked for, finished, each run by one worker and logged
once. benchmarks/services_load.py runs the same load and measures the services' memory and latency."""

import time

import pytest

from tests.helpers import load

pytestmark = pytest.mark.integration
FLOW_RUNS, SWEEP_WORKERS, SWEEP_TRIALS = 8, 4, 8


@pytest.fixture
def platform(tmp_path):
    with load.load_platform(tmp_path, FLOW_RUNS, SWEEP_WORKERS, SWEEP_TRIALS) as (repo, env):
        yield repo, env


def test_flow_runs_and_sweep_workers_at_once_lose_and_duplicate_nothing(platform):
    repo, env = platform
    start = time.monotonic()
    try:
        ids = load.start_load(env, FLOW_RUNS)
        states = load.wait_until_final(env, ids, timeout=900)
    finally:  # whatever still runs stops before the platform does
        load.cancel_unfinished(env)
    print(f"{FLOW_RUNS} flow runs and a sweep of {SWEEP_WORKERS} workers: {time.monotonic() - start:.0f} s, "
          f"{sorted(states.values())}")
    assert load.lost_or_duplicated(repo, env, ids, FLOW_RUNS, SWEEP_WORKERS, SWEEP_TRIALS) == []
