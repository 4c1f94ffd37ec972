"""PostgreSQL as MLflow's backend store and Optuna's storage, when the platform is asked for it
(`python -m services start --db postgres`, `make services DB=postgres`).

Debian's server binaries run a cluster of our own in the given folder, listening on 127.0.0.1 only (no unix
socket). One role, `flair`, owns the databases `mlflow` and `optuna`; its generated password lives in
ROOT/postgres.json (mode 0600) and reaches the MLflow server and clients only through their environment: never
a command line, a log, a flow parameter or a file in git. PostgreSQL refuses to run as root, so under root the
server runs as the `postgres` system user, which must be able to reach the data folder.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

from services import supervisor
from services.supervisor import HOST, ServiceError

USER = "flair"
DATABASES = ("mlflow", "optuna")
SERVER_USER = "postgres"


def bindir() -> Path:
    """The folder of Debian's `initdb` and `postgres` (PATH first, then the newest /usr/lib/postgresql/N)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise ServiceError("PostgreSQL server binaries not found: install Debian's postgresql package "
                           "(apt-get install postgresql)")
    return versions[-1].parent


def as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def password(root: Path) -> str:
    """The `flair` role's password: generated on first use into ROOT/postgres.json (0600)."""
    path = root / "postgres.json"
    if not path.exists():
        supervisor.write_private(path, {"user": USER, "password": secrets.token_urlsafe(24)})
    return supervisor.load(path)["password"]


def url(root: Path, port: int, database: str) -> str:
    # The driver is named: SQLAlchemy's default for postgresql:// is now psycopg 3, which is not installed.
    return f"postgresql+psycopg2://{USER}:{quote(password(root), safe='')}@{HOST}:{port}/{database}"


def init_cluster(root: Path, data: Path, log: Path) -> None:
    """initdb into `data` once (scram-sha-256 for every connection, the role `flair` as superuser)."""
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(parents=True, mode=0o700)
    pwfile = data.parent / f".{data.name}.pw"
    with os.fdopen(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(password(root))
    try:
        if os.geteuid() == 0:
            import pwd

            server = pwd.getpwnam(SERVER_USER)
            for path in (data, pwfile):
                os.chown(path, server.pw_uid, server.pw_gid)
            blocked = [p for p in data.parents if p.stat().st_mode & 0o001 == 0
                       and p.stat().st_uid != server.pw_uid]
            if blocked:
                raise ServiceError(f"PostgreSQL: the {SERVER_USER} user cannot reach {data} ({blocked[0]} is "
                                   "not searchable by others); choose another folder with --postgres-dir")
        with open(log, "a") as out:
            failed = subprocess.run(as_server_user([
                str(bindir() / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "-E", "UTF8",
                "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--no-instructions"]),
                stdout=out, stderr=subprocess.STDOUT, check=False).returncode
        if failed:
            shutil.rmtree(data, ignore_errors=True)  # a half-made cluster would be taken for a made one
            raise ServiceError(f"PostgreSQL: initdb failed; see {log}")
    finally:
        pwfile.unlink(missing_ok=True)


def command(data: Path, port: int) -> list[str]:
    return as_server_user([str(bindir() / "postgres"), "-D", str(data), "-p", str(port),
                           "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories="])


def ready(root: Path, port: int) -> bool:
    """Accepting connections as `flair`; once it is, the platform's databases are created if missing."""
    import psycopg2  # only here: the other commands should not pay for importing it

    try:
        connection = psycopg2.connect(host=HOST, port=port, user=USER, password=password(root),
                                      dbname="postgres", connect_timeout=2)
    except psycopg2.OperationalError:
        return False
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_database")
            existing = {row[0] for row in cursor.fetchall()}
            for database in DATABASES:
                if database not in existing:
                    cursor.execute(f'CREATE DATABASE "{database}" OWNER {USER}')
    finally:
        connection.close()
    return True


def answers(port: int) -> bool:
    """Whether a server accepts TCP connections on the port (a health probe that needs no password)."""
    import socket

    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((HOST, port)) == 0
