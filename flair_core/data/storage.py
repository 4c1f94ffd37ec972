"""s3:// shards through boto3, for webdataset reading and for uploading generated shards.

The endpoint and credentials come from the environment as boto3 reads them (`AWS_ENDPOINT_URL` for an
S3-compatible store such as SeaweedFS, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`). Requests are retried
with back-off, so a store that restarts while training reads shards costs a pause, not the run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from flair_core.data.errors import DataError


def split_s3_url(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise DataError(f"not an s3://bucket/key URL: {url}")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client():
    import boto3  # imported here: local-only users never pay for it
    from botocore.config import Config

    # botocore's exponential back-off over ~1 min rides out an S3 store that restarts (refused connections and
    # 5xx are retried); AWS_RETRY_MODE and AWS_MAX_ATTEMPTS still choose otherwise.
    retries = {"mode": os.environ.get("AWS_RETRY_MODE", "standard"),
               "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "10"))}
    # a new session reads the current environment
    return boto3.session.Session().client("s3", config=Config(retries=retries, connect_timeout=5))


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_):
    """webdataset opener: a streaming body, read sequentially as tar needs."""
    if "r" not in mode:
        raise DataError(f"{url}: s3 shards are written locally and uploaded with upload_folder()")
    bucket, key = split_s3_url(url)
    return s3_client().get_object(Bucket=bucket, Key=key)["Body"]


def register_s3_scheme() -> None:
    sys.modules["webdataset.gopen"].gopen_schemes["s3"] = gopen_s3


def upload_folder(local: str | Path, url: str) -> list[str]:
    """Upload every file under `local` to s3://bucket/prefix/<relative path>; returns the URLs."""
    bucket, prefix = split_s3_url(url)
    client = s3_client()
    local = Path(local)
    urls = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = f"{prefix.rstrip('/')}/{path.relative_to(local).as_posix()}".lstrip("/")
        client.upload_file(str(path), bucket, key)
        urls.append(f"s3://{bucket}/{key}")
    return urls
