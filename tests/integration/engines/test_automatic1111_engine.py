"""The automatic1111 engine against a local server speaking AUTOMATIC1111's API."""

from __future__ import annotations

import threading
import time

import pytest

from imagegen.engines import EngineError, Failure, GenerationCanceled, Run
from imagegen.engines.automatic1111 import Automatic1111Engine, Automatic1111Settings
from tests.integration.engines.a1111_server import A1111Server, out_of_memory
from tests.integration.engines.images import size_of
from tests.integration.engines.protocol import Reply
from tests.unit.engines.fakes import REQUEST


def engine(url: str, environ: dict[str, str] | None = None, **settings: object) -> Automatic1111Engine:
    options = {"base_url": url, "poll_interval_s": 0.02, **settings}
    return Automatic1111Engine(Automatic1111Settings(**options), environ or {})  # type: ignore[arg-type]


def failure(call) -> EngineError:  # type: ignore[no-untyped-def]
    with pytest.raises(EngineError) as caught:
        call()
    return caught.value


def canceled_after(server: A1111Server, comfy: Automatic1111Engine, when) -> list[object]:  # type: ignore[no-untyped-def]
    run, done = Run(60), []

    def target() -> None:
        try:
            done.append(comfy.generate(REQUEST, run))
        except GenerationCanceled:
            done.append(GenerationCanceled)

    worker = threading.Thread(target=target)
    worker.start()
    give_up = time.monotonic() + 5
    while not when() and time.monotonic() < give_up:
        time.sleep(0.01)
    run.cancel()
    worker.join(5)
    return done


def test_txt2img_gives_the_image_and_reports_our_tasks_progress() -> None:
    seen: list[float] = []
    with A1111Server(step_seconds=0.02) as server:
        image = engine(server.url, model="sdxl.safetensors", steps=10).generate(
            REQUEST, Run(10, on_progress=seen.append)
        )
    assert size_of(image) == (512, 512)
    body = server.bodies[0]
    assert body["prompt"] == "a lighthouse, watercolor style, pastel colors"
    assert (body["width"], body["height"], body["steps"], body["seed"]) == (512, 512, 10, REQUEST.seed)
    assert body["force_task_id"] == "imagegen-req-1"
    assert body["override_settings"] == {"sd_model_checkpoint": "sdxl.safetensors"}
    assert seen and all(0 <= f <= 1 for f in seen) and seen == sorted(seen)


def test_cancel_interrupts_our_running_task() -> None:
    with A1111Server(step_seconds=1) as server:
        done = canceled_after(server, engine(server.url), lambda: server.current is not None)
    assert done == [GenerationCanceled] and server.interrupts == 1


def test_cancel_of_a_task_still_queued_interrupts_it_only_once_it_starts() -> None:
    with A1111Server(step_seconds=0.05) as server:
        other = threading.Thread(
            target=lambda: engine(server.url, steps=6).generate(
                REQUEST.__class__("other", "m", "p", "s", "c", "512x512"), Run(30)
            )
        )
        other.start()
        while server.current is None:
            time.sleep(0.01)
        done = canceled_after(server, engine(server.url), lambda: "imagegen-req-1" in server.pending)
        assert done == [GenerationCanceled] and server.interrupts == 0  # theirs ran on
        other.join(5)
        give_up = time.monotonic() + 5
        while server.interrupts == 0 and time.monotonic() < give_up:
            time.sleep(0.01)
        assert server.interrupts == 1 and "imagegen-other" in server.finished


def test_without_the_task_route_progress_is_the_servers_and_cancel_interrupts_only_when_exclusive() -> None:
    with A1111Server(step_seconds=1, webui=False) as server:
        done = canceled_after(server, engine(server.url), lambda: server.current is not None)
        assert done == [GenerationCanceled] and server.interrupts == 0
    with A1111Server(step_seconds=1, webui=False) as server:
        done = canceled_after(server, engine(server.url, exclusive=True), lambda: server.current is not None)
        assert done == [GenerationCanceled] and server.interrupts == 1


def test_out_of_memory_is_transient_with_its_message() -> None:
    with A1111Server() as server:
        server.fail_with = out_of_memory()
        oom = failure(lambda: engine(server.url).generate(REQUEST, Run(10)))
    assert oom.transient
    assert oom.message.startswith("the Automatic1111 server answered 500: CUDA out of memory.")


def test_basic_auth_comes_from_the_named_variable_and_a_wrong_one_fails_the_deployment() -> None:
    with A1111Server(auth="ops:s3cret-pass") as server:
        ok = engine(server.url, {"A1111_AUTH": "ops:s3cret-pass"}, api_key_env="A1111_AUTH")
        assert size_of(ok.generate(REQUEST, Run(10))) == (512, 512)
        wrong = engine(server.url, {"A1111_AUTH": "ops:nope"}, api_key_env="A1111_AUTH")
        rejected = failure(lambda: wrong.generate(REQUEST, Run(10)))
    assert rejected.failure is Failure.DEPLOYMENT
    assert rejected.message == "the Automatic1111 server answered 401: Incorrect username or password"


def test_an_answer_without_images_is_the_deployments_failure() -> None:
    with A1111Server() as server:
        server.fail_with = Reply.json({"images": [], "parameters": {}, "info": ""})
        empty = failure(lambda: engine(server.url).generate(REQUEST, Run(10)))
    assert empty.failure is Failure.DEPLOYMENT
