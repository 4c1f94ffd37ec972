"""The local platform services (services/stack.py): real SeaweedFS, MLflow and Prefect servers on free,
non-default loopback ports under a temporary root."""

import http.client
import json
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from services.stack import GRPC_OFFSET, WEED_PARTS, LocalServices, check_up
from services.supervisor import ServiceError, free, members
from tests.helpers.paths import REPO
from tests.helpers.processes import (
    free_port,
    listeners,
    listening_ports,
    ports_listened_from,
    unix_socket_paths,
)

pytestmark = pytest.mark.integration


def service_ports() -> dict[str, int]:
    """Distinct free ports; SeaweedFS also takes the S3 port + 10000 (gRPC), so that must fit and be free."""
    ports: dict[str, int] = {}
    while len(ports) < 3:
        port = free_port()
        grpc_taken = port + GRPC_OFFSET > 65535 or not free(port + GRPC_OFFSET)
        if port in ports.values() or (not ports and grpc_taken):  # the first one is the S3 port
            continue
        ports[("s3_port", "mlflow_port", "prefect_port")[len(ports)]] = port
    return ports


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services", *args, "--root", str(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read()


def all_ports(state: dict) -> list[int]:
    ports = state["ports"]
    return [ports["prefect"], ports["mlflow"], ports["s3"], ports["s3"] + GRPC_OFFSET,
            *(ports[p] + off for p in WEED_PARTS for off in (0, GRPC_OFFSET))]


def test_start_use_status_stop(tmp_path, monkeypatch, record_property):
    root = tmp_path / "services"
    ports = service_ports()
    services = LocalServices(root, **ports)
    began = time.monotonic()
    try:
        services.start()
        record_property("start_seconds", round(time.monotonic() - began, 1))
        print(f"start took {time.monotonic() - began:.1f} s")
        env, urls = services.client_env(), services.urls()
        state = json.loads((root / "state.json").read_text())
        groups = {name: members(proc) for name, proc in state["pids"].items()}
        assert set(groups) == {"seaweedfs", "mlflow", "prefect"} and all(groups.values())
        assert urls == {"prefect": f"http://127.0.0.1:{ports['prefect_port']}",
                        "mlflow": f"http://127.0.0.1:{ports['mlflow_port']}",
                        "s3": f"http://127.0.0.1:{ports['s3_port']}"}
        assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == urls["s3"]
        assert stat.S_IMODE((root / "s3.json").stat().st_mode) == 0o600  # holds the generated secret key
        # no other local user reads the platform's state: the folder 0700, what the services wrote 0600/0700
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        loose = {str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode)) for p in root.rglob("*")
                 if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & 0o077}
        assert loose == {}, loose
        assert check_up(env) == []
        bound = listeners()  # unless told otherwise (--bind), nothing listens beyond loopback
        assert set(all_ports(state)[:3]) <= ports_listened_from(root)  # what the check after stop reads
        assert all(bound.get(port) == {"127.0.0.1"} for port in all_ports(state)[:3])  # Prefect, MLflow, S3
        assert {p: bound[p] for p in all_ports(state) if bound.get(p, {"127.0.0.1"}) != {"127.0.0.1"}} == {}

        # health endpoints
        assert get(urls["mlflow"] + "/health").strip() == b"OK"
        assert json.loads(get(env["PREFECT_API_URL"] + "/health")) is True

        # S3 with the generated credentials: buckets exist, an object goes in and comes back
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        assert {"mlflow", "dvc"} <= {b["Name"] for b in s3.list_buckets()["Buckets"]}
        s3.put_object(Bucket="dvc", Key="probe/hello.txt", Body=b"hello")
        assert s3.get_object(Bucket="dvc", Key="probe/hello.txt")["Body"].read() == b"hello"

        # MLflow: the client has no S3 credentials; the server proxies the artifact into the bucket
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                    "MLFLOW_S3_ENDPOINT_URL"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        experiment = client.create_experiment("services-test")
        run = client.create_run(experiment)
        artifact = tmp_path / "note.txt"
        artifact.write_text("artifact through the proxy")
        client.log_artifact(run.info.run_id, str(artifact))
        client.set_terminated(run.info.run_id)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow").get("Contents", [])]
        assert f"{experiment}/{run.info.run_id}/artifacts/note.txt" in keys, keys

        # status, env and a second start (a no-op) through the command line
        shown = cli(root, "status")
        assert shown.returncode == 0 and shown.stdout.count(" up (pid ") == 3, shown.stdout + shown.stderr
        exported = cli(root, "env").stdout
        assert f"export MLFLOW_TRACKING_URI={urls['mlflow']}\n" in exported
        assert f"export AWS_ACCESS_KEY_ID={env['AWS_ACCESS_KEY_ID']}\n" in exported
        again = cli(root, "start")
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
        assert json.loads((root / "state.json").read_text())["pids"] == state["pids"]
        assert all(s["up"] for s in services.status().values())

        # a crashed service: `start` brings back that one, the others keep running, its data survives
        os.killpg(state["pids"]["seaweedfs"]["pid"], signal.SIGKILL)
        while members(state["pids"]["seaweedfs"]):
            time.sleep(0.1)
        assert not services.status()["seaweedfs"]["up"] and check_up(env)
        restarted = cli(root, "start")
        assert restarted.returncode == 0 and "restarting SeaweedFS S3; Prefect, MLflow kept running" \
            in restarted.stdout, restarted.stdout + restarted.stderr
        now = json.loads((root / "state.json").read_text())["pids"]
        assert ({k: now[k] for k in ("mlflow", "prefect")}
                == {k: state["pids"][k] for k in ("mlflow", "prefect")})
        assert (now["seaweedfs"] != state["pids"]["seaweedfs"]
                and all(s["up"] for s in services.status().values()))
        # for a few seconds after a restart SeaweedFS may answer 500 while its volume server re-registers:
        # read as the library does (flair_core/data/storage.py), with botocore's standard retries
        from botocore.config import Config

        patient = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                               region_name=env["AWS_DEFAULT_REGION"],
                               aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                               aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                               config=Config(retries={"mode": "standard", "max_attempts": 10}))
        assert patient.get_object(Bucket="dvc", Key="probe/hello.txt")["Body"].read() == b"hello"
        groups["seaweedfs"] = members(now["seaweedfs"])
    finally:
        began = time.monotonic()
        services.stop()
        record_property("stop_seconds", round(time.monotonic() - began, 1))
        print(f"stop took {time.monotonic() - began:.1f} s")

    after = json.loads((root / "state.json").read_text())
    assert after["pids"] == {}
    gone = [pid for pids in groups.values() for pid in pids if Path(f"/proc/{pid}").exists()
            and (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")]
    assert gone == []
    assert set(all_ports(after)) & ports_listened_from(root) == set()
    assert not any(s["up"] for s in services.status().values())
    assert len(check_up(env)) == 3 and "MLflow at http://127.0.0.1:" in "\n".join(check_up(env))
    services.stop()  # idempotent


H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # preface, SETTINGS


def http_status(port: int, method: str, path: str) -> int | str:
    """A plain HTTP request's status, or why there was none."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body=b"written around S3" if method == "PUT" else None)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException) as err:
        return type(err).__name__
    finally:
        connection.close()


def h2_settings(port: int, tls: ssl.SSLContext | None) -> str:
    """'SETTINGS' when an HTTP/2 (gRPC's transport) server takes our hello, plaintext or over `tls`; else why
    not."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                (tls.wrap_socket(raw, server_hostname="127.0.0.1") if tls else raw) as conn:
            conn.sendall(H2_HELLO)
            frame = conn.recv(9)
    except (OSError, ssl.SSLError) as err:  # a server asking for a client certificate cuts us off here
        return f"{type(err).__name__}: {err}"
    return "SETTINGS" if len(frame) == 9 and frame[3] == 0x4 else f"no SETTINGS frame: {frame!r}"


def tls_context(certificate: Path | None = None) -> ssl.SSLContext:
    """A TLS client with `certificate` trusting its CA (beside it); without, trusting anybody: only whether
    the server refuses us is looked at then."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_alpn_protocols(["h2"])
    if certificate:
        context.load_verify_locations(certificate.parent / "ca.crt")
        context.load_cert_chain(certificate, certificate.with_suffix(".key"))
    else:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def test_seaweedfs_lets_nobody_past_s3_without_credentials(tmp_path):
    """Only SeaweedFS's S3 port is for clients, and it wants their keys. Every other TCP port the weed
    process group listens on (master, volume, filer, admin; HTTP and gRPC) refuses a client without the
    platform's certificate: plain HTTP GET and PUT of an object get neither, plaintext and certificate-less
    TLS HTTP/2 are cut off, while TLS with the certificate is answered. Before, any local user could read and
    write every object through the filer's HTTP port, and assign and write files through master and volume."""
    root = tmp_path / "services"
    services = LocalServices(root, **service_ports())
    try:
        services.start()
        state, env = json.loads((root / "state.json").read_text()), services.client_env()
        s3_port, path = state["ports"]["s3"], "/buckets/dvc/probe/hello.txt"
        weed = members(state["pids"]["seaweedfs"])
        ports = listening_ports(weed)
        assert set(all_ports(state)[2:]) <= ports, ports  # the ones we know of are found (and maybe more)

        assert {method: http_status(s3_port, method, "/dvc/probe/hello.txt") for method in ("GET", "PUT")} \
            == {"GET": 403, "PUT": 403}  # unsigned
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        s3.put_object(Bucket="dvc", Key="probe/hello.txt", Body=b"hello")
        assert s3.get_object(Bucket="dvc", Key="probe/hello.txt")["Body"].read() == b"hello"

        certificate = root / "seaweedfs-tls" / "weed.crt"
        stranger, holder = tls_context(), tls_context(certificate)
        replies = {port: {"GET": http_status(port, "GET", path), "PUT": http_status(port, "PUT", path),
                          "h2": h2_settings(port, None), "h2 over TLS": h2_settings(port, stranger),
                          "h2 over TLS with the certificate": h2_settings(port, holder)}
                   for port in sorted(ports - {s3_port})}
        let_in = {port: reply for port, reply in replies.items()
                  if any(isinstance(reply[m], int) and reply[m] < 400 for m in ("GET", "PUT"))
                  or "SETTINGS" in (reply["h2"], reply["h2 over TLS"])}
        assert let_in == {}, let_in
        # the refusals are for want of the certificate: with it, every port answers
        assert {port: reply for port, reply in replies.items()
                if reply["h2 over TLS with the certificate"] != "SETTINGS"} == {}
        # weed's plaintext filer socket lives in the private root, not in /tmp (asked of weed's own sockets: a
        # crashed weed elsewhere may have left /tmp/seaweedfs-filer-<same port>.sock behind)
        sockets = unix_socket_paths(weed)
        filer = [Path(path) for path in sockets if path.endswith("/filer.sock")]  # ROOT's, or /tmp/flair-…
        assert len(filer) == 1 and stat.S_IMODE(filer[0].parent.stat().st_mode) == 0o700, sockets
        plaintext_in_tmp = [path for path in sockets if re.fullmatch(r"/tmp/seaweedfs-filer-\d+\.sock", path)]
        assert plaintext_in_tmp == [], sockets
    finally:
        services.stop()


def test_port_in_use_starts_nothing(tmp_path):
    root = tmp_path / "services"
    ports = service_ports()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports["mlflow_port"]))
        busy.listen()
        result = cli(root, "start", "--prefect-port", str(ports["prefect_port"]),
                     "--mlflow-port", str(ports["mlflow_port"]), "--s3-port", str(ports["s3_port"]))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(ports["mlflow_port"]) in lines[0] and "MLflow" in lines[0], result.stderr
    assert result.stdout == ""
    assert not (root / "state.json").exists() and not (root / "logs").exists()
    assert {ports["s3_port"], ports["prefect_port"]}.isdisjoint(ports_listened_from(root))


def test_failed_start_names_the_service_and_stops_the_rest(tmp_path, capsys):
    """An unreachable MLflow database: one line naming MLflow and its log, and nothing left running."""
    root = tmp_path / "services"
    ports = service_ports()
    nowhere = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    services = LocalServices(root, backend_store_uri=nowhere, **ports)
    with pytest.raises(ServiceError) as failure:
        services.start()
    message = str(failure.value)
    assert capsys.readouterr().out == ""  # the reason is the only thing the user sees
    assert "\n" not in message and "MLflow" in message and str(root / "logs" / "mlflow.log") in message
    state = json.loads((root / "state.json").read_text())
    assert state["pids"] == {}
    assert set(all_ports(state)).isdisjoint(ports_listened_from(root))
