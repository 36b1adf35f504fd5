"""Image storage on S3-compatible object storage (AWS S3, MinIO, Cloudflare R2, moto), and the factory
that picks the image store from a URL.

Images are stored as `<prefix><id>.png` and served by the API at `/images/<id>.png` (it proxies them),
so an image URL works whichever process answers it and the bucket can stay private.

Credentials come from boto3's standard chain, never from the URL: AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or AWS_PROFILE with ~/.aws/credentials and ~/.aws/config,
or the instance or container role. The region is `region` if given, else AWS_REGION,
AWS_DEFAULT_REGION or the profile's. The credentials need s3:GetObject, s3:PutObject and s3:ListBucket:
without ListBucket, S3 answers a missing image with 403 instead of 404, which reads as an outage here.

boto3 is synchronous: each call runs on a thread (asyncio.to_thread), never on the event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from imagegen.domain.errors import InvalidInput, StorageUnavailable
from imagegen.domain.generation import valid_id
from imagegen.ports import ImageStore
from imagegen.storage.folder_images import FolderImageStore

ACCEPTED_FORMS = (
    "a folder path, file:///absolute/path, or "
    "s3://bucket[/prefix][?endpoint_url=http(s)://host[:port]&region=name]"
)


class S3ImageStore:
    """Stores each image as one object, `<prefix><id>.png`; the prefix is used as given (`images/`)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self._client = client if client is not None else _connect(endpoint_url, region)

    async def put(self, image_id: str, png: bytes) -> str:
        return await asyncio.to_thread(self._put, image_id, png)

    async def open(self, image_id: str) -> bytes | None:
        if not valid_id(image_id):
            return None
        return await asyncio.to_thread(self._get, image_id)

    def _put(self, image_id: str, png: bytes) -> str:
        key = self._key(image_id)
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=png, ContentType="image/png")
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable("write", key, exc) from exc
        return f"/images/{image_id}.png"

    def _get(self, image_id: str) -> bytes | None:
        key = self._key(image_id)
        try:
            png: bytes = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise self._unavailable("read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable("read", key, exc) from exc
        return png

    def _key(self, image_id: str) -> str:
        if not valid_id(image_id):
            raise ValueError(f"invalid image id {image_id!r}")
        return f"{self.prefix}{image_id}.png"

    def _unavailable(self, action: str, key: str, exc: Exception) -> StorageUnavailable:
        return StorageUnavailable(
            f"image store unavailable: could not {action} s3://{self.bucket}/{key}: {_reason(exc)}",
            bucket=self.bucket,
            key=key,
        )


def _connect(endpoint_url: str | None, region: str | None) -> Any:
    # Imported here: boto3 takes a good fraction of a second to import, which folder deployments and
    # every CLI command would otherwise pay.
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=5,
        read_timeout=30,
        retries={"mode": "standard", "max_attempts": 3},
        # The threads of the API and the job workers share this client: enough connections that
        # none is opened and thrown away per request.
        max_pool_connections=64,
        # Custom endpoints (MinIO, moto, an IP address) rarely resolve <bucket>.<host>.
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    # A session per store: boto3's default session is not thread-safe to create clients from.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _is_missing(exc: ClientError) -> bool:
    # A missing bucket is also a 404, but it is a misconfiguration, not a missing image.
    code = exc.response.get("Error", {}).get("Code")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code != "NoSuchBucket" and (code == "NoSuchKey" or status == 404)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return str(exc)


def open_image_store(url: str | None, default_folder: Path) -> ImageStore:
    """The image store a URL names: None (the default folder), a path, file:///path or s3://bucket/prefix."""
    if not url:
        return FolderImageStore(default_folder)
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced [ in an IPv6 host
        raise _invalid(url, str(exc)) from exc
    if parts.scheme == "":
        return FolderImageStore(Path(url))
    if parts.scheme == "file":
        return _folder(url, parts.netloc, parts.path)
    if parts.scheme == "s3":
        return _s3(url, parts.netloc, parts.path, parts.query)
    raise _invalid(url, f"unknown scheme '{parts.scheme}'")


def _folder(url: str, host: str, path: str) -> FolderImageStore:
    if host not in ("", "localhost"):
        raise _invalid(url, "a file URL names a local folder (file:///path); mount remote folders instead")
    if not path:
        raise _invalid(url, "the folder path is missing")
    return FolderImageStore(Path(unquote(path)))


def _s3(url: str, bucket: str, path: str, query: str) -> S3ImageStore:
    if "@" in bucket:
        shown = url.replace(bucket.rpartition("@")[0], "***", 1)  # never echo a secret into logs
        raise _invalid(shown, "credentials do not belong in the URL; set them in the AWS environment")
    if not bucket:
        raise _invalid(url, "the bucket is missing")
    prefix = unquote(path).lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # the path names a folder in the bucket: s3://b/images holds images/<id>.png
    options = _options(url, query)
    return S3ImageStore(
        bucket, prefix, endpoint_url=options.get("endpoint_url"), region=options.get("region")
    )


def _options(url: str, query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in ("endpoint_url", "region"):
            raise _invalid(url, f"unknown option '{name}' (options: endpoint_url, region)")
        if name in options:
            raise _invalid(url, f"option '{name}' is given twice")
        if not value:
            raise _invalid(url, f"option '{name}' is empty")
        options[name] = value
    endpoint = options.get("endpoint_url")
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _invalid(url, f"endpoint_url '{endpoint}' is not an http(s)://host[:port] URL")
    return options


def _invalid(url: str, problem: str) -> InvalidInput:
    return InvalidInput(f"image store URL '{url}': {problem}; accepted: {ACCEPTED_FORMS}", url=url)
