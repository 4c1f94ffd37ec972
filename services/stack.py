"""The platform's local services: SeaweedFS (S3 object store), an MLflow tracking server and a Prefect server,
and with `--db postgres` a PostgreSQL server for MLflow's backend store and Optuna's storage
(services/postgres.py).

    python -m services start [--root .services] [--prefect-port 4200] [--mlflow-port 5000]
                             [--s3-port 8333] [--backend-store-uri URI] [--weed-ports M,V,F,A]
                             [--db sqlite|postgres] [--postgres-port 5432] [--postgres-dir DIR]
                             [--auth off|on] [--bind ADDRESS]
    python -m services stop|status|env [--root .services]
    python -m services backup OUT [--root .services]
    python -m services restore IN [--root .services] [--prefect-port P] [--mlflow-port P] [--s3-port P]
                                  [--postgres-port P] [--weed-ports M,V,F,A] [--postgres-dir DIR]

`backup` copies the running platform (its databases, objects, identities and settings) into a new private
folder; `restore` recreates it in a new or empty ROOT and leaves its services running (services/backup.py).

Everything listens on 127.0.0.1 and runs under services.supervisor. Team mode (`--auth on`), for a platform
shared by several people: MLflow runs its basic-auth app and Prefect checks its API auth string, so nobody
reaches either without the generated credentials, which `services env` hands to clients (flows, dashboard,
DVC). Only then may `--bind` open MLflow and Prefect to other machines; SeaweedFS and PostgreSQL always stay
on 127.0.0.1 (artifacts reach remote users through MLflow's proxy). SeaweedFS's ports other than S3 (master,
volume, filer, admin; HTTP and gRPC) take only clients with the platform's certificate (services/weed_tls.py).
Pids, ports and settings are kept in ROOT/state.json, logs in ROOT/logs/<name>.log; the generated S3 identity
(ROOT/s3.json), PostgreSQL password (ROOT/postgres.json), team credentials (ROOT/auth.json) and SeaweedFS's
certificate (ROOT/seaweedfs-tls) are mode 0600.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import ipaddress
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from services import postgres, supervisor, weed_tls
from services.supervisor import HOST, ServiceError

# set by `services env` with --db postgres; read by flair_lab/sweeps.py
OPTUNA_STORAGE_ENV = "FLAIR_OPTUNA_STORAGE"

# start order (Prefect boots while MLflow migrates); stop: reverse
ORDER = ("postgres", "seaweedfs", "prefect", "mlflow")
LABEL = {"postgres": "PostgreSQL", "seaweedfs": "SeaweedFS S3", "mlflow": "MLflow", "prefect": "Prefect"}
URL_KEY = {"postgres": "postgres", "seaweedfs": "s3", "mlflow": "mlflow", "prefect": "prefect"}
DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000, "s3": 8333, "postgres": 5432}
# `weed mini` also runs these servers; each listens on its port and on port + 10000 (gRPC). Its admin
# worker always dials admin port + 10000, so the offsets are kept rather than choosing gRPC ports freely.
WEED_PARTS = ("master", "volume", "filer", "admin")
GRPC_OFFSET = 10000
BUCKETS = ("mlflow", "dvc")
BIN = Path(sysconfig.get_path("scripts"))  # weed, mlflow and prefect are installed beside this interpreter
# A service whose dependency restarts is restarted too: MLflow keeps pooled connections to PostgreSQL.
DEPENDENTS = {"postgres": ("mlflow",)}
# PostgreSQL's SIGTERM waits for every client to leave; SIGINT is its clean "fast" shutdown
STOP_SIGNAL = {"postgres": signal.SIGINT}
# seconds; 2 cores start all three at once
START_TIMEOUT = {"postgres": 60, "seaweedfs": 60, "mlflow": 180, "prefect": 120}


class LocalServices:
    """Ports left as None fall back to those of the last start (so `stop`/`env` need only the root),
    then to the defaults; SeaweedFS's internal ports are picked free once and then reused."""

    def __init__(self, root=".services", prefect_port=None, mlflow_port=None, s3_port=None,
                 backend_store_uri=None, weed_ports: dict[str, int] | None = None, db=None,
                 postgres_port=None, postgres_dir=None, auth=None, bind=None):
        self.root = Path(root).resolve()
        state = self._load()
        asked = {"prefect": prefect_port, "mlflow": mlflow_port, "s3": s3_port, "postgres": postgres_port,
                 **(weed_ports or {})}
        self.ports = {k: asked.get(k) or state.get("ports", {}).get(k) or DEFAULT_PORTS.get(k)
                      for k in (*DEFAULT_PORTS, *WEED_PARTS)}
        self.db = db or state.get("db") or "sqlite"
        if self.db not in ("sqlite", "postgres"):
            raise ServiceError(f"unknown database {self.db!r}: sqlite (one machine, the default) or postgres")
        if self.db == "postgres" and backend_store_uri:
            raise ServiceError(
                "--backend-store-uri and --db postgres both choose MLflow's database: give one")
        self.postgres_dir = Path(postgres_dir or state.get("postgres_dir")
                                 or self.root / "postgres").resolve()
        # With PostgreSQL, the URI (which holds the password) is built when needed and never stored.
        self.backend_store_uri = (None if self.db == "postgres" else backend_store_uri
                                  or state.get("backend_store_uri") or f"sqlite:///{self.root / 'mlflow.db'}")
        self.auth = auth or state.get("auth") or "off"
        if self.auth not in ("off", "on"):
            raise ServiceError(f"unknown --auth {self.auth!r}: off (one machine, the default) or on (team "
                               "mode)")
        self.bind = bind or state.get("bind") or HOST
        try:
            loopback = ipaddress.ip_address(self.bind).is_loopback
        except ValueError:
            raise ServiceError(f"--bind {self.bind!r} is not an IP address") from None
        if not loopback and self.auth != "on":
            raise ServiceError(f"--bind {self.bind} would open MLflow and Prefect to other machines without "
                               "credentials: add --auth on (team mode)")

    def settings(self) -> dict:
        """What the running processes were started with: a change restarts every service."""
        return {"db": self.db, "backend_store_uri": self.backend_store_uri, "auth": self.auth,
                "bind": self.bind}

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(name for name in ORDER if name != "postgres" or self.db == "postgres")

    def _mlflow_store(self) -> str:
        return self.backend_store_uri or postgres.url(self.root, self.ports["postgres"], "mlflow")

    # ---- what clients see ------------------------------------------------------------------------------
    def urls(self) -> dict[str, str]:
        address = ipaddress.ip_address(self.bind)  # clients on this machine reach a wildcard bind on loopback
        host = HOST if address.is_unspecified else f"[{address}]" if address.version == 6 else str(address)
        urls = {name: f"http://{host}:{self.ports[name]}" for name in ("prefect", "mlflow")}
        urls["s3"] = f"http://{HOST}:{self.ports['s3']}"
        if self.db == "postgres":  # shown without the password
            urls["postgres"] = f"postgresql://{postgres.USER}@{HOST}:{self.ports['postgres']}"
        return urls

    def client_env(self) -> dict[str, str]:
        urls, (key, secret) = self.urls(), self._credentials()
        env = {"PREFECT_API_URL": urls["prefect"] + "/api", "MLFLOW_TRACKING_URI": urls["mlflow"],
               "MLFLOW_S3_ENDPOINT_URL": urls["s3"], "AWS_ENDPOINT_URL": urls["s3"],
               "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
               "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               # MLflow's own default retries a call for ~4 min; 4 retries back off 1+2+4+8 s, and the flows'
               # task retries span a longer outage (a restart takes ~15 s) before failing with one line
               "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "DVC_NO_ANALYTICS": "1"}
        if self.db == "postgres":  # sweeps read their Optuna storage from here (flair_lab/sweeps.py)
            env[OPTUNA_STORAGE_ENV] = postgres.url(self.root, self.ports["postgres"], "optuna")
        if self.auth == "on":  # the names MLflow's and Prefect's own clients read
            team = self._team_account()
            env |= {"MLFLOW_TRACKING_USERNAME": team["username"],
                    "MLFLOW_TRACKING_PASSWORD": team["password"],
                    "PREFECT_API_AUTH_STRING": f"{team['username']}:{team['password']}"}
        return env

    def status(self) -> dict:
        """{service: {"url", "pid", "up"}}; up means our process is alive and the service answers."""
        pids, down, urls = self._load().get("pids", {}), self._down(), self.urls()
        return {name: {"url": urls[URL_KEY[name]], "pid": pids[name]["pid"] if name in pids else None,
                       "up": name not in down and name in pids and bool(supervisor.members(pids[name]))}
                for name in self.services}

    # ---- start / stop ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start what is not running and healthy; services that are up stay up, so after one crashed only it
        (and what depends on it) restarts."""
        previous = os.umask(0o077)  # every file written while starting (logs, configs) is the owner's alone
        try:
            self._start()
        finally:
            os.umask(previous)

    def _start(self) -> None:
        began = time.monotonic()
        state = self._load()
        recorded = state.get("pids", {})
        if recorded and any(state.get(key) != value for key, value in self.settings().items()):
            print("restarting every service: the database, team mode or bind address changed")
            self.stop()
            recorded = {}
        down = self._down()
        todo = {name for name in self.services
                if name in down or name not in recorded or not supervisor.members(recorded[name])}
        todo |= {dependent for name in todo for dependent in DEPENDENTS.get(name, ())} & set(self.services)
        if not todo:
            print("services already running: " + ", ".join(f"{k} {u}" for k, u in self.urls().items()))
            return
        kept = {name: recorded[name] for name in self.services if name not in todo}
        for name in reversed(ORDER):  # a live but unhealthy (hung, or on other ports) process goes first
            if name in todo and name in recorded:
                supervisor.terminate(recorded[name], LABEL[name], STOP_SIGNAL.get(name, signal.SIGTERM))
        if kept:
            print(f"restarting {', '.join(LABEL[n] for n in ORDER if n in todo)}; "
                  f"{', '.join(LABEL[n] for n in ORDER if n in kept)} kept running")
        self._pick_weed_ports()
        self._check_ports(todo)
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        # Other local users read nothing here: credentials, the MLflow and Prefect databases, the S3 objects.
        other_user = self.db == "postgres" and os.geteuid() == 0  # PostgreSQL runs as its own user
        supervisor.make_private(self.root, keep=(self.postgres_dir,), traverse=other_user)
        self._save(ports=self.ports, **self.settings(), postgres_dir=str(self.postgres_dir), pids=kept)
        # MLflow's GenAI job runner (scorers, trace roll-ups) adds 8 processes and ~15 s to start-up; the
        # platform tracks runs and models only. Set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true to keep it.
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, **self.client_env(),
               "DO_NOT_TRACK": "1"}
        started = dict(kept)
        try:
            for name in (n for n in ORDER if n in todo):
                if name == "mlflow":
                    self._migrate(env)
                started[name] = self._spawn(name, *self.server_command(name, env), started)
                if name == "postgres":  # MLflow connects to it as it boots
                    self._wait(name, started, self._healthy(name))
            for name in (n for n in ORDER if n in todo and n != "postgres"):
                self._wait(name, started, self._healthy(name))
        except BaseException:  # includes Ctrl-C: never leave half a platform behind
            self.stop(quiet=True)  # quietly: the one line that matters is the reason
            raise
        print(f"services up in {time.monotonic() - began:.1f} s: "
              + ", ".join(f"{k} {u}" for k, u in self.urls().items()))

    def server_command(self, name: str, env: dict) -> tuple[list[str], dict]:
        """`name`'s command line and environment, with the folders (PostgreSQL: the cluster) it needs.
        Public so that what a server is started with (bind address, auth app, where secrets go) can be
        checked without starting it."""
        p = self.ports
        if name == "postgres":
            data = self.postgres_dir / "data"
            postgres.init_cluster(self.root, data, self._log("postgres"))
            return postgres.command(data, p["postgres"]), env
        if name == "seaweedfs":
            data = self.root / "seaweedfs"
            data.mkdir(exist_ok=True)
            command = [
                str(BIN / "weed"), "mini", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
                f"-s3.config={self.root / 's3.json'}", f"-s3.port={p['s3']}",
                *(f"-{part}.port={p[part]}" for part in WEED_PARTS),
                # no phoning home, and no WebDAV / Iceberg / Lance / admin UI: fewer open ports
                "-master.telemetry=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-admin.ui=false",
                # unix sockets in a private folder, not /tmp/seaweedfs-<part>-PORT.sock (a crash leaves them
                # behind; the filer's serves its HTTP API without TLS)
                *(f"-{part}.localSocket={self._socket_folder() / part}.sock" for part in ("s3", "filer"))]
            return command, {**env, **weed_tls.weed_env(self.root)}  # every port but S3's: mutual TLS
        # Secrets go in the environment, never on a command line (the log records it, `ps` shows it).
        if name == "prefect":
            home = self.root / "prefect"
            home.mkdir(exist_ok=True)
            server_env = {**env, "PREFECT_HOME": str(home),
                          "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
                          "PREFECT_SERVER_UI_API_URL": env["PREFECT_API_URL"]}
            if self.auth == "on":  # every API call but the health check needs it (the UI asks for it)
                server_env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"]
            return [str(BIN / "prefect"), "server", "start", "--host", self.bind, "--port", str(p["prefect"]),
                    "--analytics-off"], server_env
        command = [str(BIN / "mlflow"), "server", "--artifacts-destination", f"s3://{BUCKETS[0]}", "--host",
                   self.bind, "--port", str(p["mlflow"]), "--workers", "1"]  # 1 worker on 2 cores
        server_env = {**env, "MLFLOW_BACKEND_STORE_URI": self._mlflow_store()}
        if not ipaddress.ip_address(self.bind).is_unspecified:
            # MLflow refuses Host headers other than localhost and private ranges (DNS rebinding): clients
            # here come in by the bind address. (A wildcard bind keeps MLflow's default; set
            # MLFLOW_SERVER_ALLOWED_HOSTS to add a host name.)
            host = self.urls()["mlflow"].removeprefix("http://").rsplit(":", 1)[0]
            server_env.setdefault("MLFLOW_SERVER_ALLOWED_HOSTS", ",".join(
                f"{name}{port}" for name in (host, "localhost") for port in ("", f":{p['mlflow']}")))
        if self.auth == "on":
            command += ["--app-name", "basic-auth"]
            server_env |= self._mlflow_auth()
        return command, server_env

    def _healthy(self, name: str):
        if name == "postgres":
            return lambda: postgres.ready(self.root, self.ports["postgres"])
        if name == "seaweedfs":
            return self._s3_ready
        path = {"mlflow": "/health", "prefect": "/api/health"}[name]
        return lambda: supervisor.answers(self.urls()[name] + path)

    def stop(self, quiet: bool = False) -> None:
        pids = self._load().get("pids", {})
        for name in reversed(ORDER):
            if name in pids:
                if supervisor.terminate(pids[name], LABEL[name], STOP_SIGNAL.get(name, signal.SIGTERM)) \
                        and not quiet:
                    print(f"stopped {LABEL[name]}")
                del pids[name]
                self._save(pids=pids)

    # ---- helpers ---------------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], env: dict, started: dict) -> dict:
        proc = supervisor.spawn(cmd, self._log(name), env, cwd=self.root)
        self._save(pids={**started, name: proc})  # recorded at once, so `stop` can clean up after a crash
        return proc

    def _wait(self, name: str, started: dict, healthy) -> None:
        supervisor.wait_until(healthy, started[name], LABEL[name], self._log(name), START_TIMEOUT[name])

    def _migrate(self, env: dict) -> None:
        """Create or upgrade the tracking database in one process, while the others boot: server workers
        would otherwise race on creating a new store, and an old schema makes the server refuse to start.
        Skipped (it costs ~10 s) when the installed MLflow version already migrated this database, and for
        PostgreSQL, where the one server worker creates a new store itself (`mlflow db upgrade` would put the
        password on a command line; after an MLflow upgrade, run it by hand)."""
        if self.db == "postgres":
            return
        done = {"uri": self.backend_store_uri, "mlflow": importlib.metadata.version("mlflow")}
        sqlite_gone = self.backend_store_uri.startswith("sqlite:///") and not Path(
            self.backend_store_uri.removeprefix("sqlite:///")).exists()
        if self._load().get("migrated") == done and not sqlite_gone:
            return
        with open(self._log("mlflow"), "a") as log:
            try:
                failed = subprocess.run([str(BIN / "mlflow"), "db", "upgrade", self.backend_store_uri],
                                        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                        timeout=START_TIMEOUT["mlflow"], check=False).returncode
            except subprocess.TimeoutExpired:
                failed = True
            if failed:
                raise ServiceError(f"MLflow: database migration failed; see {self._log('mlflow')}")
        self._save(migrated=done)

    def _s3_ready(self) -> bool:
        """The S3 health check (list_buckets with the generated keys); once it passes, creates the buckets."""
        import boto3  # only here: the other commands should not pay for importing it
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        env = self.client_env()
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                          config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))
        try:
            for bucket in set(BUCKETS) - {b["Name"] for b in s3.list_buckets()["Buckets"]}:
                s3.create_bucket(Bucket=bucket)
        except (BotoCoreError, ClientError):
            return False
        return True

    def _socket_folder(self) -> Path:
        """Where weed's unix sockets go: ROOT/seaweedfs, or, when that path is too long for a socket (108
        bytes), a folder of this root's own in /tmp, owner-only like ROOT."""
        folder = self.root / "seaweedfs"
        if len(str(folder / "filer.sock")) >= 100:
            digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
            folder = Path("/tmp") / f"flair-services-{digest}"
            folder.mkdir(mode=0o700, exist_ok=True)
            if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:  # someone else's
                raise ServiceError(f"{folder} is not a folder of this user's alone: remove it, or use a "
                                   "shorter --root")
        return folder

    def _pick_weed_ports(self) -> None:
        taken = {self.ports[k] for k in DEFAULT_PORTS} | {self.ports["s3"] + GRPC_OFFSET}
        for part in WEED_PARTS:
            self.ports[part] = self.ports[part] or supervisor.pick_port(taken, (0, GRPC_OFFSET))
            taken |= {self.ports[part], self.ports[part] + GRPC_OFFSET}

    def _check_ports(self, names: set[str]) -> None:
        """The ports of the services `names` about to start must be free (and distinct)."""
        p = self.ports
        wanted = {"postgres": [(p["postgres"], "PostgreSQL", "--postgres-port")],
                  "prefect": [(p["prefect"], "Prefect", "--prefect-port")],
                  "mlflow": [(p["mlflow"], "MLflow", "--mlflow-port")],
                  "seaweedfs": [(p["s3"], "SeaweedFS S3", "--s3-port"),
                                (p["s3"] + GRPC_OFFSET, "SeaweedFS S3 gRPC", "--s3-port"),
                                *((p[part] + off, f"SeaweedFS {part}{' gRPC' if off else ''}", "--weed-ports")
                                  for part in WEED_PARTS for off in (0, GRPC_OFFSET))]}
        seen = set()
        for port, label, flag in (w for name in ORDER if name in names for w in wanted[name]):
            if port in seen or not 0 < port < 65536 or not supervisor.free(port):
                raise ServiceError(f"port {port} for {label} is already in use (or invalid) on {HOST}; "
                                   f"choose another with {flag}")
            seen.add(port)

    def _credentials(self) -> tuple[str, str]:
        """The one S3 identity: generated on first use into the config file weed reads, never in the repo."""
        path = self.root / "s3.json"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            cred = {"accessKey": "FLAIR" + secrets.token_hex(8).upper(),
                    "secretKey": secrets.token_urlsafe(30)}
            config = {"identities": [{"name": "flair", "credentials": [cred],
                                      "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
            supervisor.write_private(path, config)
        cred = json.loads(path.read_text())["identities"][0]["credentials"][0]
        return cred["accessKey"], cred["secretKey"]

    def _team_account(self) -> dict[str, str]:
        """Team mode's one account (user `flair`, its password, MLflow's Flask secret), generated on first
        use, kept in ROOT/auth.json (0600)."""
        path = self.root / "auth.json"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            supervisor.write_private(path, {"username": "flair", "password": secrets.token_urlsafe(24),
                                            "mlflow_flask_secret": secrets.token_urlsafe(32)})
        return json.loads(path.read_text())

    def _mlflow_auth(self) -> dict[str, str]:
        """MLflow's basic-auth app: its own user store beside ours, our account its admin, nobody else allowed
        in."""
        team = self._team_account()
        config = self.root / "mlflow-auth.ini"
        config.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                          f"database_uri = sqlite:///{self.root / 'mlflow-auth.db'}\n"
                          f"admin_username = {team['username']}\n"
                          "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        return {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": team["password"],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": team["mlflow_flask_secret"]}

    def _probe_env(self) -> dict:  # health probes only: no credentials generated as a side effect
        urls = self.urls()
        return {"PREFECT_API_URL": urls["prefect"] + "/api", "MLFLOW_TRACKING_URI": urls["mlflow"],
                "AWS_ENDPOINT_URL": urls["s3"]}

    def _down(self) -> dict[str, str]:
        """{service: url} of this platform's services that do not answer (PostgreSQL by TCP, the rest by
        HTTP)."""
        down = _down(self._probe_env())
        if self.db == "postgres" and not postgres.answers(self.ports["postgres"]):
            down["postgres"] = self.urls()["postgres"]
        return down

    def _log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def _load(self) -> dict:
        return supervisor.load(self.root / "state.json")

    def _save(self, **changes) -> None:
        supervisor.save(self.root / "state.json", **changes)


def check_up(env: dict) -> list[str]:
    """One line per service named in a client environment (see `client_env`) that does not answer."""
    return [f"{LABEL[name]} at {url} is not answering; start the services with `make services`"
            for name, url in _down(env).items()]


def _down(env: dict) -> dict[str, str]:
    """{service: url} for the services named in a client environment that do not answer."""
    probes = {"prefect": (env.get("PREFECT_API_URL"), "/health"),
              "mlflow": (env.get("MLFLOW_TRACKING_URI"), "/health"),
              "seaweedfs": (env.get("AWS_ENDPOINT_URL") or env.get("MLFLOW_S3_ENDPOINT_URL"), "")}
    # S3 answers an anonymous request with 403: any HTTP reply shows it is up
    return {name: url for name, (url, path) in probes.items() if url and url.startswith("http")
            and not supervisor.answers(url.rstrip("/") + path, any_reply=not path)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("start", ("start SeaweedFS, MLflow and Prefect (and PostgreSQL with --db postgres); "
                                 "return once all are healthy")),
                       ("stop", "stop them (Prefect, MLflow, SeaweedFS)"), ("status", "show each service"),
                       ("env", "print `export` lines for clients"),
                       ("backup", ("copy the running platform's databases, objects, identities and settings "
                                   "into the new folder OUT (private; written whole or not at all)")),
                       ("restore", ("recreate a backup in a new or empty ROOT (the original's ports unless "
                                    "given), start its services and leave them running"))):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--root", default=".services", help="state, data and logs (default: .services)")
    start = commands.choices["start"]
    for port, default in DEFAULT_PORTS.items():
        start.add_argument(f"--{port}-port", type=int, help=f"default: the last start's, else {default}")
    start.add_argument("--backend-store-uri", help="MLflow database (default: sqlite:///ROOT/mlflow.db)")
    start.add_argument("--db", choices=("sqlite", "postgres"),
                       help="MLflow's and Optuna's database: sqlite (one machine) or a PostgreSQL server "
                            "started here (default: the last start's, else sqlite)")
    start.add_argument("--auth", choices=("off", "on"),
                       help="team mode: MLflow and Prefect ask for the credentials generated into "
                            "ROOT/auth.json, which `env` hands to clients (default: the last start's, else "
                            "off)")
    start.add_argument("--bind", help="address MLflow and Prefect listen on; other than loopback needs "
                                      "--auth on (default: the last start's, else 127.0.0.1)")
    start.add_argument("--postgres-dir", help="PostgreSQL's cluster folder (default: ROOT/postgres); under "
                                              "root it must be reachable by the postgres user")
    start.add_argument("--weed-ports", help="SeaweedFS master,volume,filer,admin ports; each also uses "
                                            "port+10000 (default: picked free once, then reused)")
    commands.choices["backup"].add_argument("out", metavar="OUT", help="the backup folder to create")
    restore = commands.choices["restore"]
    restore.add_argument("source", metavar="IN", help="a folder `backup` wrote")
    for port in DEFAULT_PORTS:
        restore.add_argument(f"--{port}-port", type=int, help="default: the original's")
    restore.add_argument("--weed-ports", help="SeaweedFS master,volume,filer,admin ports (default: the "
                                              "original's)")
    restore.add_argument("--postgres-dir", help="PostgreSQL's cluster folder, new or empty (default: the "
                                                "original's if outside its ROOT, else ROOT/postgres)")
    args = parser.parse_args(argv)
    weed = dict(zip(WEED_PARTS, map(int, args.weed_ports.split(",")), strict=True)) \
        if getattr(args, "weed_ports", None) else None
    options = ("prefect_port", "mlflow_port", "s3_port", "backend_store_uri")
    try:
        if args.command in ("backup", "restore"):
            from services import backup  # here: services.backup imports this module
        if args.command == "restore":  # into a new or empty ROOT: nothing to read from it first
            ports = {k: getattr(args, k) for k in ("prefect_port", "mlflow_port", "s3_port", "postgres_port")}
            done = backup.restore(args.source, args.root, weed_ports=weed, postgres_dir=args.postgres_dir,
                                  **ports)
            print(f"restored {args.source} into {Path(args.root).resolve()}: {backup.summary(done)}")
            return 0
        services = LocalServices(args.root, *(getattr(args, k, None) for k in options), weed,
                                 *(getattr(args, k, None)
                                   for k in ("db", "postgres_port", "postgres_dir", "auth", "bind")))
        if args.command == "start":
            services.start()
        elif args.command == "stop":
            services.stop()
        elif args.command == "status":
            state = services.status()
            for name, s in state.items():
                print(f"{LABEL[name]:13s} {s['url']:24s} " + (f"up (pid {s['pid']})" if s["up"] else "down"))
            return 0 if all(s["up"] for s in state.values()) else 3
        elif args.command == "backup":
            print(f"backup of {services.root} in {args.out}: "
                  + backup.summary(backup.backup(services, Path(args.out))))
        else:
            for key, value in services.client_env().items():
                print(f"export {key}={shlex.quote(value)}")
    except ServiceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
