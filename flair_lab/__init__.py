"""The platform layer between the library and the flows: MLflow tracking, Optuna sweeps, reports, the paper's
numbers.

Never imports Prefect (tests/test_layers.py): the dashboard and the main job's table use it without the
orchestrator, which only the flows in `flows/` need.
"""
