"""The registry (entry points) and the simulated engine behind the port."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from imagegen.domain.generation import GenerationSpec
from imagegen.engines import EngineError, Failure, GenerationCanceled, Registry, Run
from imagegen.engines.registry import EngineUnavailable, UnknownEngine
from imagegen.engines.simulated import SimulatedEngine, SimulatedSettings
from imagegen.models.simulated import draw_png
from tests.unit.engines.fakes import KIND, REQUEST, FakeClock


def test_the_built_in_engines_are_found_through_their_entry_points() -> None:
    registry = Registry.discover()
    assert {"simulated", "openai", "comfyui", "automatic1111"} <= set(registry.names())
    assert registry.kind("comfyui").name == "comfyui"


def test_an_unknown_engine_names_the_known_ones() -> None:
    with pytest.raises(UnknownEngine, match="unknown engine 'nope'; the known engines are: scripted"):
        Registry.of(KIND).kind("nope")


def test_an_entry_point_that_does_not_load_an_engine_kind_is_refused_clearly() -> None:
    from importlib.metadata import EntryPoint

    broken = EntryPoint("broken", "imagegen.engines.no_such_module:ENGINE", "imagegen.engines")
    wrong = EntryPoint("wrong", "imagegen.engines.template:DEFAULT", "imagegen.engines")
    registry = Registry({"broken": broken, "wrong": wrong})
    with pytest.raises(EngineUnavailable, match="failed to load: ModuleNotFoundError"):
        registry.kind("broken")
    with pytest.raises(EngineUnavailable, match="is not an EngineKind named 'wrong'"):
        registry.kind("wrong")


def simulated(rng_seed: int = 0, **settings: object) -> SimulatedEngine:
    return SimulatedEngine(SimulatedSettings(**settings), {}, rng=random.Random(rng_seed))  # type: ignore[arg-type]


def test_the_simulated_engine_draws_what_the_simulated_models_draw_after_its_latency() -> None:
    clock = FakeClock()
    image = simulated(failure_rate=0, latency_ms=400, jitter=0).generate(
        REQUEST, Run(60, clock=clock, sleep=clock.sleep)
    )
    spec = GenerationSpec("u", REQUEST.model, REQUEST.style, REQUEST.color, REQUEST.size, REQUEST.prompt)
    assert image == draw_png(spec) and clock.slept == [0.4]


def test_its_failures_are_permanent_unless_set_transient() -> None:
    for kind, failure in (("permanent", Failure.PERMANENT), ("transient", Failure.TRANSIENT)):
        with pytest.raises(EngineError) as caught:
            simulated(failure_rate=1, latency_ms=0, failure=kind).generate(REQUEST, Run(1))
        assert caught.value.failure is failure
        assert caught.value.message == "model-a failed to generate the image (simulated)"


def test_a_cancel_during_its_latency_ends_it_without_an_image() -> None:
    run = Run(60)
    run.cancel()
    with pytest.raises(GenerationCanceled):
        simulated(failure_rate=0, latency_ms=50_000).generate(REQUEST, run)


def test_its_size_map_draws_at_the_engine_size() -> None:
    engine = simulated(failure_rate=0, latency_ms=0, size_map={"512x512": "256x256"}, resize=True)
    assert Image.open(io.BytesIO(engine.generate(REQUEST, Run(1)))).size == (256, 256)
