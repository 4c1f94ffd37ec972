"""The platform layer between the library and the flows: MLflow tracking, Optuna sweeps, reports.

Never imports Prefect (tests/test_layers.py), so the dashboard and sweep workers can use it without the
orchestrator; the Prefect flows live in `flows/`.
"""
