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
    assert LocalServices(tmp_path).services == ("seaweedfs", "prefect", "mlflow")
    with pytest.raises(ServiceError, match="unknown database 'mysql'"):
        LocalServices(tmp_path, db="mysql")
    with pytest.raises(ServiceError, match="--backend-store-uri and --db postgres both choose"):
        LocalServices(tmp_path, backend_store_uri="sqlite:///x.db", db="postgres")


def test_the_postgres_password_reaches_clients_only_through_their_environment(tmp_path):
    services = LocalServices(tmp_path, db="postgres", postgres_port=25999)
    assert services.services == ("postgres", "seaweedfs", "prefect", "mlflow")
    env = services.client_env()
    secret = json.loads((tmp_path / "postgres.json").read_text())["password"]
    assert stat.S_IMODE((tmp_path / "postgres.json").stat().st_mode) == 0o600 and len(secret) >= 30
    assert env[OPTUNA_STORAGE_ENV] == f"postgresql+psycopg2://flair:{secret}@127.0.0.1:25999/optuna"
    # not in state.json
    assert secret not in json.dumps(services.urls()) and services.backend_store_uri is None
    assert f":{secret}@" in LocalServices(tmp_path, db="postgres").client_env()[OPTUNA_STORAGE_ENV]  # kept
    # SQLite: the file's storage
    assert OPTUNA_STORAGE_ENV not in LocalServices(tmp_path / "other").client_env()


def test_the_sweep_takes_its_storage_from_the_services_unless_told_otherwise(monkeypatch):
    from flair_lab.sweeps import load_sweep_config

    shared = "postgresql+psycopg2://flair:pw@127.0.0.1:5432/optuna"
    assert load_sweep_config("params/sweep.yaml").storage.startswith("sqlite:///")
    monkeypatch.setenv(OPTUNA_STORAGE_ENV, shared)
    assert load_sweep_config("params/sweep.yaml").storage == shared
    assert (load_sweep_config("params/sweep.yaml", ["storage=sqlite:///mine.db"]).storage
            == "sqlite:///mine.db")


def test_team_mode_hands_its_generated_credentials_to_clients_and_nowhere_else(tmp_path):
    solo = LocalServices(tmp_path / "solo").client_env()
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"} & set(solo)
    team = LocalServices(tmp_path, auth="on")
    env = team.client_env()
    auth = json.loads((tmp_path / "auth.json").read_text())
    assert stat.S_IMODE((tmp_path / "auth.json").stat().st_mode) == 0o600 and len(auth["password"]) >= 30
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("flair", auth["password"])
    assert env["PREFECT_API_AUTH_STRING"] == f"flair:{auth['password']}"
    assert LocalServices(tmp_path, auth="on").client_env() == env  # generated once, then kept
    command, server_env = team.server_command("mlflow", env)
    assert command[-2:] == ["--app-name", "basic-auth"] and auth["password"] not in " ".join(command)
    assert server_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == auth["password"]
    assert auth["password"] not in (tmp_path / "mlflow-auth.ini").read_text()
    assert auth["password"] not in json.dumps(team.settings()) + json.dumps(team.urls())
    with pytest.raises(ServiceError, match="unknown --auth 'yes'"):
        LocalServices(tmp_path / "x", auth="yes")


def test_services_bind_loopback_unless_told_and_never_open_without_credentials(tmp_path):
    assert LocalServices(tmp_path).bind == "127.0.0.1"
    with pytest.raises(ServiceError) as refused:
        LocalServices(tmp_path, bind="0.0.0.0")
    assert str(refused.value) == ("--bind 0.0.0.0 would open MLflow and Prefect to other machines without "
                                  "credentials: add --auth on (team mode)")
    with pytest.raises(ServiceError, match="'everywhere' is not an IP address"):
        LocalServices(tmp_path, bind="everywhere")
    wide = LocalServices(tmp_path, bind="0.0.0.0", auth="on")
    assert wide.server_command("prefect", wide.client_env())[0][3:5] == ["--host", "0.0.0.0"]
    assert wide.urls()["mlflow"].startswith("http://127.0.0.1:")  # clients here still come in over loopback
    other = LocalServices(tmp_path / "other", bind="127.0.0.2")
    assert (other.urls()["prefect"].startswith("http://127.0.0.2:")
            and other.urls()["s3"].startswith("http://127.0.0.1:"))
