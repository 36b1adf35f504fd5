"""Output checks (an image, of the size paid for) and the cleaning of messages users read."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from imagegen.engines import EngineError, Failure
from imagegen.engines.output import checked_png
from imagegen.engines.redact import clean_message
from tests.unit.engines.fakes import png


def encoded(size: tuple[int, int], fmt: str, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "orange").save(out, format=fmt)
    return out.getvalue()


def test_a_png_of_the_right_size_passes_unchanged() -> None:
    data = png((512, 512))
    assert checked_png(data, "512x512", resize=False) is data


@pytest.mark.parametrize(("fmt", "mode"), [("JPEG", "RGB"), ("WEBP", "RGBA"), ("GIF", "P"), ("TIFF", "CMYK")])
def test_other_formats_and_modes_are_stored_as_png(fmt: str, mode: str) -> None:
    out = checked_png(encoded((512, 512), fmt, mode), "512x512", resize=False)
    image = Image.open(io.BytesIO(out))
    assert image.format == "PNG" and image.size == (512, 512) and image.mode in ("RGB", "RGBA")


@pytest.mark.parametrize("data", [b"", b"<html>502</html>", png()[:200]], ids=["empty", "html", "truncated"])
def test_what_is_not_a_whole_image_is_refused(data: bytes) -> None:
    with pytest.raises(EngineError) as caught:
        checked_png(data, "512x512", resize=False)
    assert caught.value.failure is Failure.DEPLOYMENT
    assert caught.value.message == "the engine's answer is not an image"


def damaged(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


@pytest.mark.parametrize(
    "change",
    [
        lambda data: damaged(data, len(data) // 2),  # a byte of the image data (its CRC no longer matches)
        lambda data: data + b"trailing bytes",
        lambda data: data[:-12],  # no end chunk
        lambda data: damaged(data, 12),  # the header chunk's name
    ],
    ids=["flipped-byte", "trailing", "no-end", "no-header"],
)
def test_a_png_whose_chunks_are_not_whole_is_refused_without_decoding(change: Any) -> None:
    with pytest.raises(EngineError) as caught:
        checked_png(change(png((512, 512))), "512x512", resize=False)
    assert caught.value.message == "the engine's answer is not an image"


def test_another_size_is_refused_or_resized_to_cover_without_distortion() -> None:
    with pytest.raises(EngineError, match="returned a 1024x1024 image for a 1024x1792 request"):
        checked_png(png((1024, 1024)), "1024x1792", resize=False)
    out = checked_png(png((1024, 1024)), "1024x1792", resize=True)
    assert Image.open(io.BytesIO(out)).size == (1024, 1792)


def test_a_decompression_bomb_is_refused_before_it_is_decoded() -> None:
    bomb = encoded((9000, 9000), "PNG", "1")  # ~81 M pixels in a few kB
    with pytest.raises(EngineError):
        checked_png(bomb, "512x512", resize=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("connect to http://10.0.0.7:8188/prompt failed", "connect to [url] failed"),
        ("gpu-box.internal:8188 refused", "[address] refused"),
        ("host 192.168.1.20 down", "host [address] down"),
        ("Incorrect API key provided: sk-proj-abcdefgh12345", "Incorrect API key provided: [redacted]"),
        ("header Authorization: Bearer abc.def", "header Authorization: Bearer [redacted]"),
        ("?api_key=hunter2&x=1", "?api_key=[redacted]&x=1"),
        ("missing /home/ops/models/sdxl.safetensors", "missing [path]"),
        ("line one\n  line two", "line one line two"),
    ],
)
def test_messages_lose_urls_addresses_paths_and_credentials(text: str, expected: str) -> None:
    assert clean_message(text) == expected


def test_a_known_secret_is_removed_wherever_it_appears_and_messages_are_bounded() -> None:
    assert clean_message("key hunter2 was rejected", ("hunter2",)) == "key [redacted] was rejected"
    assert len(clean_message("x" * 5000)) == 500
    assert EngineError("at http://internal/").message == "at [url]"
