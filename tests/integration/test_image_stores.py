"""The image-store contract: what every adapter behind `imagegen.ports.ImageStore` must do.

The `store` fixture runs each contract test on the folder store (a tmp_path) and on the S3 store
against moto's standalone server on loopback (a fresh bucket per test). Then the S3 store's own
promises (keys under the prefix, outages reported as such) and `open_image_store`'s URL forms.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagegen.domain.errors import InvalidInput, StorageUnavailable
from imagegen.ports import ImageStore
from imagegen.storage.folder_images import FolderImageStore
from imagegen.storage.s3_images import S3ImageStore, open_image_store

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 256  # every byte value: nothing may be re-encoded


def png(n: int) -> bytes:
    return PNG + n.to_bytes(4, "big")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials, and nothing from the developer's own AWS setup."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server_module = pytest.importorskip("moto.server", reason="S3 tests need moto[server] (the dev extra)")
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def s3(moto_endpoint: str) -> Any:
    """A plain boto3 client, to look at the bucket from outside the store (one per module: they are slow)."""
    import boto3

    session = boto3.session.Session("testing", "testing", region_name="us-east-1")
    return session.client("s3", endpoint_url=moto_endpoint)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"images-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    if request.param == "folder":
        return FolderImageStore(tmp_path / "images")
    endpoint = request.getfixturevalue("moto_endpoint")
    return S3ImageStore(request.getfixturevalue("bucket"), "images/", endpoint_url=endpoint)


def keys(s3: Any, bucket: str) -> set[str]:
    return {item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


# -- the contract -------------------------------------------------------------------------------
async def test_a_put_image_is_served_at_its_api_path_and_opens_with_the_same_bytes(store: ImageStore) -> None:
    url = await store.put("gen_01HX.a-b@c:d+e", PNG)

    assert url == "/images/gen_01HX.a-b@c:d+e.png"
    assert await store.open("gen_01HX.a-b@c:d+e") == PNG


async def test_an_image_never_put_opens_as_none(store: ImageStore) -> None:
    await store.put("gen_other", PNG)

    assert await store.open("gen_missing") is None


async def test_putting_an_image_again_replaces_it(store: ImageStore) -> None:
    await store.put("gen_1", png(1))
    await store.put("gen_1", png(2))

    assert await store.open("gen_1") == png(2)


@pytest.mark.parametrize("image_id", ["a/b", "../escape", "..", ".", "", "a\\b", "a b", "x" * 129])
async def test_ids_that_could_leave_the_store_are_refused(store: ImageStore, image_id: str) -> None:
    with pytest.raises(ValueError, match="invalid image id"):
        await store.put(image_id, PNG)

    assert await store.open(image_id) is None


async def test_eight_writers_putting_at_once_all_land_whole(store: ImageStore) -> None:
    async def put_many(writer: int) -> None:
        for i in range(10):
            await store.put(f"gen_{writer}_{i}", png(writer * 100 + i))
            await store.put("gen_shared", png(writer))

    await asyncio.gather(*(put_many(w) for w in range(8)))

    for w in range(8):
        for i in range(10):
            assert await store.open(f"gen_{w}_{i}") == png(w * 100 + i)
    assert await store.open("gen_shared") in {png(w) for w in range(8)}  # one whole write wins


# -- the S3 store -------------------------------------------------------------------------------
async def test_s3_objects_are_named_prefix_id_png_and_typed_as_png(
    moto_endpoint: str, s3: Any, bucket: str
) -> None:
    store = S3ImageStore(bucket, "tenant-a/images/", endpoint_url=moto_endpoint)

    await store.put("gen_1", PNG)
    await store.put("gen_2", PNG)

    assert keys(s3, bucket) == {"tenant-a/images/gen_1.png", "tenant-a/images/gen_2.png"}
    head = s3.head_object(Bucket=bucket, Key="tenant-a/images/gen_1.png")
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == len(PNG)


async def test_s3_without_a_prefix_puts_images_at_the_bucket_root(
    moto_endpoint: str, s3: Any, bucket: str
) -> None:
    store = S3ImageStore(bucket, endpoint_url=moto_endpoint)

    await store.put("gen_1", PNG)

    assert keys(s3, bucket) == {"gen_1.png"}


async def test_s3_reads_only_under_its_own_prefix(moto_endpoint: str, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="gen_1.png", Body=PNG)

    assert await S3ImageStore(bucket, "images/", endpoint_url=moto_endpoint).open("gen_1") is None


async def test_a_missing_bucket_is_an_outage_not_a_missing_image(moto_endpoint: str) -> None:
    store = S3ImageStore("no-such-bucket", endpoint_url=moto_endpoint)

    with pytest.raises(
        StorageUnavailable, match="could not read s3://no-such-bucket/gen_1.png: NoSuchBucket"
    ):
        await store.open("gen_1")
    with pytest.raises(
        StorageUnavailable, match="could not write s3://no-such-bucket/gen_1.png: NoSuchBucket"
    ):
        await store.put("gen_1", PNG)


async def test_a_store_whose_server_is_down_is_unavailable() -> None:
    store = S3ImageStore("images", endpoint_url=f"http://127.0.0.1:{free_port()}")

    with pytest.raises(StorageUnavailable, match="image store unavailable: could not write") as written:
        await store.put("gen_1", PNG)
    with pytest.raises(StorageUnavailable, match="image store unavailable: could not read"):
        await store.open("gen_1")
    assert written.value.status == 503


async def test_an_s3_url_opens_a_working_store_under_its_prefix(
    moto_endpoint: str, s3: Any, bucket: str
) -> None:
    store = open_image_store(f"s3://{bucket}/generated?endpoint_url={moto_endpoint}", Path("unused"))

    await store.put("gen_1", PNG)

    assert await store.open("gen_1") == PNG
    assert keys(s3, bucket) == {"generated/gen_1.png"}


# -- open_image_store ---------------------------------------------------------------------------
@pytest.mark.parametrize("url", [None, ""])
async def test_no_url_means_the_default_folder(url: str | None) -> None:
    store = open_image_store(url, Path("var/images"))

    assert isinstance(store, FolderImageStore)
    assert store.root == Path("var/images")


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("shared/images", "shared/images"),
        ("/mnt/shared/images", "/mnt/shared/images"),
        ("file:///mnt/shared/images", "/mnt/shared/images"),
        ("file://localhost/mnt/shared/images", "/mnt/shared/images"),
        ("file:///mnt/my%20images", "/mnt/my images"),
    ],
)
async def test_a_path_or_file_url_is_a_folder_store(url: str, root: str) -> None:
    store = open_image_store(url, Path("var/images"))

    assert isinstance(store, FolderImageStore)
    assert store.root == Path(root)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://images", ("images", "", None, None)),
        ("s3://images/", ("images", "", None, None)),
        ("s3://images/prod", ("images", "prod/", None, None)),
        ("s3://images/prod/generated/", ("images", "prod/generated/", None, None)),
        (
            "s3://images/prod?endpoint_url=http://127.0.0.1:9000&region=eu-west-1",
            ("images", "prod/", "http://127.0.0.1:9000", "eu-west-1"),
        ),
        (
            "s3://images?endpoint_url=https%3A%2F%2Fabc.r2.cloudflarestorage.com&region=auto",
            ("images", "", "https://abc.r2.cloudflarestorage.com", "auto"),
        ),
    ],
)
async def test_an_s3_url_names_bucket_prefix_endpoint_and_region(
    url: str, expected: tuple[str, str, str | None, str | None]
) -> None:
    store = open_image_store(url, Path("var/images"))

    assert isinstance(store, S3ImageStore)
    assert (store.bucket, store.prefix, store.endpoint_url, store.region) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://host/images", "unknown scheme 'ftp'"),
        ("gs://bucket/images", "unknown scheme 'gs'"),
        ("s3://", "the bucket is missing"),
        ("s3:///images", "the bucket is missing"),
        ("s3://images?endpoint=http://x", "unknown option 'endpoint'"),
        ("s3://images?region=a&region=b", "option 'region' is given twice"),
        ("s3://images?region=", "option 'region' is empty"),
        ("s3://images?endpoint_url=127.0.0.1:9000", "is not an http(s)://host[:port] URL"),
        ("file://fileserver/images", "a file URL names a local folder"),
        ("file://", "the folder path is missing"),
        ("s3://[::1/images", "Invalid IPv6 URL"),
    ],
)
async def test_bad_image_store_urls_are_refused_with_the_accepted_forms(url: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        open_image_store(url, Path("var/images"))

    assert problem in refused.value.message
    assert "accepted: a folder path, file:///absolute/path, or s3://bucket" in refused.value.message


async def test_credentials_in_an_s3_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(InvalidInput, match="credentials do not belong in the URL") as refused:
        open_image_store("s3://AKIAEXAMPLE:s3cr3t@images/prod", Path("var/images"))

    assert "s3cr3t" not in refused.value.message
    assert "AKIAEXAMPLE" not in refused.value.message
