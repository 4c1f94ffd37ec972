"""MLflow experiment names that a flow writes and the dashboard reads. Here rather than in the flow, which
imports Prefect, so the dashboard can import them."""

STUDY_EXPERIMENT = "flair-lab-studies"  # the equal-budget study: a parent run per study, a nested run per run
SWEEP_EXPERIMENT = "flair-lab-sweeps"  # Optuna sweeps: a parent run per study, a nested run per trial
