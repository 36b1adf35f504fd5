import io
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from PIL import Image

from imagegen.domain.catalog import INITIAL_DATA, ModelSettings
from imagegen.domain.generation import GenerationSpec
from imagegen.models import ModelFailure, SimulatedModel, draw_png, simulated

SPEC = GenerationSpec(
    user_id="testUser1",
    model="model-a",
    style="watercolor",
    color="pastel",
    size="512x512",
    prompt="a lighthouse at dawn",
)
# Tiny images keep the statistical tests fast; the size does not change the failure draws.
TINY = replace(SPEC, size="16x16")
INSTANT = ModelSettings("model-a", failure_rate=0.0, latency_ms=0)


class RecordingSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.calls.append(seconds)


def model(seed: int = 0, **overrides) -> tuple[SimulatedModel, RecordingSleep]:
    sleep = RecordingSleep()
    return SimulatedModel(rng=random.Random(seed), sleep=sleep, **overrides), sleep


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


@pytest.mark.parametrize("size", ["512x512", "1024x1024", "1024x1792"])
def test_draws_a_png_of_exactly_the_requested_size(size):
    width, height = (int(n) for n in size.split("x"))

    assert open_png(draw_png(replace(SPEC, size=size))).size == (width, height)


@pytest.mark.parametrize("style", [*INITIAL_DATA.styles, "pixel art"])
@pytest.mark.parametrize("color", [*INITIAL_DATA.colors, "ultraviolet"])
def test_draws_every_style_and_color_including_unknown_ones(style, color):
    image = open_png(draw_png(replace(SPEC, style=style, color=color, size="64x96")))

    image.load()  # decodes every pixel: a truncated or corrupt PNG fails here
    assert image.size == (64, 96)


@pytest.mark.parametrize("style", [*INITIAL_DATA.styles, "pixel art"])
@pytest.mark.parametrize("size", ["1x1", "3x5", "7x2", "33x17"])
def test_draws_tiny_and_odd_sizes_in_every_style(style, size):
    width, height = (int(n) for n in size.split("x"))

    assert open_png(draw_png(replace(SPEC, style=style, size=size))).size == (width, height)


@pytest.mark.parametrize("size", ["512x512", "64x96", "33x17", "7x2", "1x1"])
@pytest.mark.parametrize("style", ["anime", "realistic"])
def test_the_png_holds_exactly_the_painting_widened_and_its_rows_repeated_down(style, size):
    """The hand-written encoder against Pillow's pixels: the painting, widened by Pillow, with each of
    its rows repeated down in turn, and nothing else."""
    width, height = (int(n) for n in size.split("x"))
    spec = replace(SPEC, style=style, size=size)
    small = (max(1, width // simulated.SCALE), max(1, height // simulated.SCALE))
    painting = simulated.PAINTERS[style](
        small, simulated.palette_of(spec.color), random.Random(simulated.seed_of(spec))
    )
    wide = painting.convert("RGB").resize((width, small[1]), Image.Resampling.BILINEAR)
    expected = Image.new("RGB", (width, height))
    for y in range(height):
        source = max(r for r in range(small[1]) if r * height // small[1] <= y)
        expected.paste(wide.crop((0, source, width, source + 1)), (0, y))

    image = open_png(draw_png(spec))

    assert image.mode == "RGB"
    assert image.tobytes() == expected.tobytes()


def test_draws_identical_bytes_for_the_same_spec():
    assert draw_png(SPEC) == draw_png(replace(SPEC))


@pytest.mark.parametrize(
    "change",
    [{"prompt": "a lighthouse at dusk"}, {"style": "oil painting"}, {"color": "neon"}],
    ids=["prompt", "style", "color"],
)
def test_draws_a_different_image_when_the_prompt_style_or_color_changes(change):
    assert draw_png(replace(SPEC, **change)) != draw_png(SPEC)


def test_returns_the_drawn_png_when_the_model_succeeds():
    simulated, _ = model()

    assert simulated.generate(SPEC, INSTANT) == draw_png(SPEC)


def test_a_failure_rate_of_one_always_fails():
    simulated, _ = model()
    settings = replace(INSTANT, failure_rate=1.0)

    for _ in range(200):
        with pytest.raises(ModelFailure):
            simulated.generate(TINY, settings)


def test_a_failure_rate_of_zero_never_fails():
    simulated, _ = model()

    for _ in range(200):
        simulated.generate(TINY, INSTANT)


def test_the_failure_message_names_the_model():
    simulated, _ = model(failure_rate=1.0)

    with pytest.raises(ModelFailure, match=r"^model-b failed to generate the image \(simulated\)$"):
        simulated.generate(replace(TINY, model="model-b"), INSTANT)


def test_a_failure_rate_of_thirty_percent_fails_about_thirty_percent_of_the_time():
    simulated, _ = model(seed=42)
    settings = replace(INSTANT, failure_rate=0.3)

    failures = sum(fails(simulated, TINY, settings) for _ in range(2000))

    assert 0.24 * 2000 <= failures <= 0.36 * 2000


def test_a_latency_of_zero_never_sleeps():
    simulated, sleep = model()

    for _ in range(50):
        simulated.generate(TINY, INSTANT)

    assert sleep.calls == []


def test_a_latency_of_200_ms_sleeps_within_the_jitter_bounds():
    simulated, sleep = model(jitter=0.25)
    settings = replace(INSTANT, latency_ms=200)

    for _ in range(200):
        simulated.generate(TINY, settings)

    assert len(sleep.calls) == 200
    assert all(0.150 <= seconds <= 0.250 for seconds in sleep.calls)
    assert len(set(sleep.calls)) > 100  # jittered, not a constant


def test_no_jitter_sleeps_exactly_the_latency():
    simulated, sleep = model(jitter=0.0)

    simulated.generate(TINY, replace(INSTANT, latency_ms=200))

    assert sleep.calls == [0.2]


def test_the_constructor_overrides_beat_the_model_settings():
    slow_and_broken = ModelSettings("model-a", failure_rate=1.0, latency_ms=5000)
    simulated, sleep = model(failure_rate=0.0, latency_ms=0)

    simulated.generate(TINY, slow_and_broken)

    assert sleep.calls == []


def test_an_override_failure_rate_of_one_fails_a_model_that_never_fails():
    simulated, _ = model(failure_rate=1.0)

    assert fails(simulated, TINY, INSTANT)


def test_an_override_latency_replaces_the_model_latency():
    simulated, sleep = model(latency_ms=100, jitter=0.0)

    simulated.generate(TINY, replace(INSTANT, latency_ms=5000))

    assert sleep.calls == [0.1]


@pytest.mark.parametrize(
    "overrides",
    [{"failure_rate": 1.5}, {"failure_rate": -0.1}, {"latency_ms": -1}, {"jitter": 2.0}],
)
def test_refuses_settings_outside_their_range(overrides):
    with pytest.raises(ValueError):
        SimulatedModel(**overrides)


def test_one_instance_serves_eight_threads_at_once():
    simulated, sleep = model(seed=7, failure_rate=0.5, latency_ms=1)
    spec = replace(SPEC, size="64x64")
    expected = draw_png(spec)

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: outcome(simulated, spec, INSTANT), range(400)))

    assert set(outcomes) == {expected, "failed"}
    assert 120 <= outcomes.count("failed") <= 280
    assert len(sleep.calls) == 400


def fails(simulated: SimulatedModel, spec: GenerationSpec, settings: ModelSettings) -> bool:
    return outcome(simulated, spec, settings) == "failed"


def outcome(simulated: SimulatedModel, spec: GenerationSpec, settings: ModelSettings):
    try:
        return simulated.generate(spec, settings)
    except ModelFailure:
        return "failed"
