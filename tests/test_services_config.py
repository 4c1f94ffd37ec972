"""How the services are configured, without starting any: the database choice, where the PostgreSQL password
goes (a 0600 file and the client environment, never state.json or a displayed URL), and the sweep taking its
storage from that environment."""

import json
import stat

import pytest

from services.stack import OPTUNA_STORAGE_ENV, LocalServices
from services.supervisor import ServiceError


def test_the_database_choice_is_checked_and_sqlite_stays_the_default(tmp_path):
    assert LocalServices(tmp_path).db == "sqlite"
    assert LocalServices(tmp_path).services == ("seaweedfs", "mlflow", "prefect")
    with pytest.raises(ServiceError, match="unknown database 'mysql'"):
        LocalServices(tmp_path, db="mysql")
    with pytest.raises(ServiceError, match="--backend-store-uri and --db postgres both choose"):
        LocalServices(tmp_path, backend_store_uri="sqlite:///x.db", db="postgres")


def test_the_postgres_password_reaches_clients_only_through_their_environment(tmp_path):
    services = LocalServices(tmp_path, db="postgres", postgres_port=25999)
    assert services.services == ("postgres", "seaweedfs", "mlflow", "prefect")
    env = services.client_env()
    secret = json.loads((tmp_path / "postgres.json").read_text())["password"]
    assert stat.S_IMODE((tmp_path / "postgres.json").stat().st_mode) == 0o600 and len(secret) >= 30
    assert env[OPTUNA_STORAGE_ENV] == f"postgresql+psycopg2://flair:{secret}@127.0.0.1:25999/optuna"
    assert secret not in json.dumps(services.urls()) and services.backend_store_uri is None  # not in state.json
    assert f":{secret}@" in LocalServices(tmp_path, db="postgres").client_env()[OPTUNA_STORAGE_ENV]  # kept
    assert OPTUNA_STORAGE_ENV not in LocalServices(tmp_path / "other").client_env()  # SQLite: the file's storage


def test_the_sweep_takes_its_storage_from_the_services_unless_told_otherwise(monkeypatch):
    from flows.study import load_sweep_config

    shared = "postgresql+psycopg2://flair:pw@127.0.0.1:5432/optuna"
    assert load_sweep_config("params/sweep.yaml").storage.startswith("sqlite:///")
    monkeypatch.setenv(OPTUNA_STORAGE_ENV, shared)
    assert load_sweep_config("params/sweep.yaml").storage == shared
    assert load_sweep_config("params/sweep.yaml", ["storage=sqlite:///mine.db"]).storage == "sqlite:///mine.db"
