"""The platform's local services: `supervisor` runs, health-checks and stops detached processes; `stack` is
the Prefect, MLflow and S3 stack with its command line (`python -m services`); `backup` copies its state and
brings it back. Kept out of `flows/` because none of it is a flow and the dashboard's launcher
(`dashboard/serve.py`) shares the supervisor."""
