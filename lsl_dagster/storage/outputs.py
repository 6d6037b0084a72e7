"""Where asset outputs are kept: a local directory (the default) or, to scale out, a bucket behind the S3
API (AWS S3, MinIO, Ceph, ...), named `s3://bucket/prefix`. The S3 client takes its endpoint and
credentials from the standard AWS settings (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), never from here,
so locations are safe to show as metadata."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lsl_dagster.storage.files import atomic_write_text, atomic_writer

S3 = "s3://"


def join(base: str, *parts: str) -> str:
    """A location under `base` (a directory or an s3:// URL)."""
    if is_remote(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base).joinpath(*parts))


def is_remote(location: str) -> bool:
    return location.startswith(S3)


def located(stored: str, runs_dir: str | Path) -> str:
    """Where a location stored in outputs or metadata is now: an s3:// URL as it is; a path relative to the
    runs directory under `runs_dir`, the one in force now, wherever the runs directory was then (an
    absolute path, as older outputs have, stays as it is)."""
    return stored if is_remote(stored) else str(Path(runs_dir) / stored)


def parent(location: str) -> str:
    return location.rsplit("/", 1)[0] if is_remote(location) else str(Path(location).parent)


def _s3() -> Any:
    """A client per use (a few per step): it follows the AWS settings in force, and clients are cheap."""
    import boto3

    return boto3.client("s3")


def _bucket_key(location: str) -> tuple[str, str]:
    parts = urlsplit(location)
    return parts.netloc, parts.path.lstrip("/")


def write_text(location: str, text: str) -> None:
    """Replace the object at `location` whole: an S3 PUT, like the local atomic rename, is all or nothing."""
    if is_remote(location):
        bucket, key = _bucket_key(location)
        _s3().put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"), ContentType="application/json")
    else:
        atomic_write_text(Path(location), text)


def read_text(location: str) -> str:
    if is_remote(location):
        bucket, key = _bucket_key(location)
        client = _s3()
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
        except client.exceptions.NoSuchKey:
            raise FileNotFoundError(location) from None
    return Path(location).read_text(encoding="utf-8")


def upload(path: Path, location: str) -> None:
    """Copy a finished local file to `location` whole, streamed (a multipart upload for a large one)."""
    if is_remote(location):
        bucket, key = _bucket_key(location)
        _s3().upload_file(str(path), bucket, key)
    else:
        with path.open("rb") as source, atomic_writer(Path(location), "wb") as target:
            shutil.copyfileobj(source, target)


def read_lines(location: str) -> Iterator[str]:
    """The lines of a text file or object, streamed: memory does not grow with its size."""
    if is_remote(location):
        bucket, key = _bucket_key(location)
        client = _s3()
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
        except client.exceptions.NoSuchKey:
            raise FileNotFoundError(location) from None
        for line in body.iter_lines():
            yield line.decode("utf-8")
    else:
        with Path(location).open(encoding="utf-8") as lines:
            for line in lines:
                yield line.rstrip("\n")
