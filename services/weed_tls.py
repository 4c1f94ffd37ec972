"""Mutual TLS on SeaweedFS's internal ports: only the S3 API is for clients.

`weed mini` runs a master, a volume server, a filer and an admin server beside the S3 gateway, each on an HTTP
port and a gRPC port (+10000), and by default none of them asks who calls: the filer's HTTP port alone serves
GET/PUT/DELETE of every object, so any local user could go around S3's access keys. Here each of those servers
gets a certificate (security.toml's `grpc.*` and `https.*` keys, passed as WEED_* environment variables) and
finishes a TLS handshake only with a client showing a certificate from the platform's own CA; weed's parts
show theirs to each other. The S3 port stays plain HTTP, guarded by its keys.

The CA signs one certificate, then its private key is dropped: nothing else can ever be issued under it. The
files live in ROOT/seaweedfs-tls (0600), made once and reused, so a restarted weed finds the same ones.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

FOLDER = "seaweedfs-tls"
CA_NAME = "FLAIR Lab SeaweedFS CA"
VALID_FOR = datetime.timedelta(days=3650)
# weed's parts that serve or dial gRPC: each is given the one certificate (a part left out would serve
# plaintext, or fail to reach the others)
GRPC_PARTS = ("master", "volume", "filer", "s3", "admin", "worker", "client")
# servers whose HTTP port asks for a client certificate (a CA set = mutual TLS); `client` is what weed's
# own parts use to reach them (the S3 gateway reading and writing chunks on the volume server)
HTTPS_PARTS = ("master", "volume", "filer", "admin", "client")


def weed_env(root: Path) -> dict[str, str]:
    """The WEED_* settings that close every internal port to clients without the certificate; the files are
    made on first use. Only paths: no secret goes through the environment or a command line."""
    folder = root / FOLDER
    ca, cert, key = folder / "ca.crt", folder / "weed.crt", folder / "weed.key"
    if not all(path.exists() for path in (ca, cert, key)):
        _issue(ca, cert, key)
    env = {"WEED_GRPC_CA": str(ca), "WEED_HTTPS_CLIENT_ENABLED": "true"}
    for part in GRPC_PARTS:
        env |= {f"WEED_GRPC_{part.upper()}_CERT": str(cert), f"WEED_GRPC_{part.upper()}_KEY": str(key)}
    for part in HTTPS_PARTS:
        env |= {f"WEED_HTTPS_{part.upper()}_CERT": str(cert), f"WEED_HTTPS_{part.upper()}_KEY": str(key),
                f"WEED_HTTPS_{part.upper()}_CA": str(ca)}
    return env


def _issue(ca_path: Path, cert_path: Path, key_path: Path) -> None:
    """A new CA and the one certificate it signs (server and client use, for 127.0.0.1 and localhost)."""
    from cryptography import x509  # only here: made once per root
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])

    def signed(subject: str, public_key, *extensions: tuple[x509.ExtensionType, bool]) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(ca_name).public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALID_FOR))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)
        return builder.sign(ca_key, hashes.SHA256())

    ca = signed(CA_NAME, ca_key.public_key(), (x509.BasicConstraints(ca=True, path_length=0), True))
    both_ends = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = signed("seaweedfs", key.public_key(), (x509.BasicConstraints(ca=False, path_length=None), True),
                  (x509.ExtendedKeyUsage(both_ends), False),
                  (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                x509.DNSName("localhost")]), False))
    ca_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_path.unlink(missing_ok=True)  # removed first, written last: a set cut short is made anew next time
    pem = serialization.Encoding.PEM
    for path, data in ((key_path, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption())),
                       (cert_path, cert.public_bytes(pem)), (ca_path, ca.public_bytes(pem))):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
