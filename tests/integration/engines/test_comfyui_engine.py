"""The comfyui engine against a local server speaking ComfyUI's HTTP API."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from imagegen.engines import EngineError, Failure, GenerationCanceled, Run
from imagegen.engines.comfyui import ComfyUIEngine, ComfyUISettings
from tests.integration.engines.comfyui_server import WORKFLOW, ComfyUIServer
from tests.integration.engines.images import size_of
from tests.integration.engines.protocol import Reply, closed_port
from tests.unit.engines.fakes import REQUEST


@pytest.fixture
def server():
    with ComfyUIServer() as running:
        yield running


def engine(url: str, workflow: dict[str, Any] = WORKFLOW, **settings: object) -> ComfyUIEngine:
    options = {"base_url": url, "workflow": workflow, "model": "sdxl.safetensors", "poll_interval_s": 0.02}
    return ComfyUIEngine(ComfyUISettings(**(options | settings)), {})  # type: ignore[arg-type]


def failure(call) -> EngineError:  # type: ignore[no-untyped-def]
    with pytest.raises(EngineError) as caught:
        call()
    return caught.value


def wait_until(condition, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, "condition never held"
        time.sleep(0.01)


def test_the_workflow_is_filled_queued_polled_and_its_image_fetched(server) -> None:
    image = engine(server.url, negative_prompt="blurry").generate(REQUEST, Run(10))
    assert size_of(image) == (512, 512)
    (workflow,) = server.prompts.values()
    assert workflow["6"]["inputs"]["text"] == "a lighthouse, watercolor style, pastel colors"
    assert workflow["7"]["inputs"]["text"] == "blurry"
    assert workflow["5"]["inputs"] == {"width": 512, "height": 512, "batch_size": 1}
    assert workflow["3"]["inputs"]["seed"] == REQUEST.seed
    assert workflow["4"]["inputs"]["ckpt_name"] == "sdxl.safetensors"
    posted = next(e for e in server.exchanges if e.path == "/prompt").json
    assert posted["client_id"] == "imagegen-req-1"
    assert server.paths("GET")[-1] == "/view"


def test_a_workflow_the_server_refuses_is_the_deployments_failure_with_each_nodes_complaint(server) -> None:
    bad = {
        **WORKFLOW,
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": "wide{{width}}", "height": 8}},
    }
    refused = failure(lambda: engine(server.url, bad).generate(REQUEST, Run(10)))
    assert refused.failure is Failure.DEPLOYMENT
    assert refused.message == (
        "ComfyUI refused the workflow: Prompt outputs failed validation; "
        "node 5 (EmptyLatentImage): width, wide512"
    )
    unknown = {**WORKFLOW, "10": {"class_type": "NotInstalledNode", "inputs": {"x": "{{prompt}}"}}}
    missing = failure(lambda: engine(server.url, unknown).generate(REQUEST, Run(10)))
    assert "Cannot execute because node NotInstalledNode does not exist." in missing.message


def test_an_execution_error_is_reported_and_out_of_memory_is_transient(server) -> None:
    server.execution_error = ("torch.OutOfMemoryError", "Allocation on device")
    oom = failure(lambda: engine(server.url).generate(REQUEST, Run(10)))
    assert oom.transient and oom.message == "ComfyUI failed in node KSampler: Allocation on device"
    server.execution_error = ("FileNotFoundError", "No such file /opt/comfy/models/sdxl.safetensors")
    missing = failure(lambda: engine(server.url).generate(REQUEST, Run(10)))
    assert missing.failure is Failure.DEPLOYMENT
    assert missing.message == "ComfyUI failed in node KSampler: No such file [path]"


def test_cancel_interrupts_our_running_prompt_and_nothing_else(server) -> None:
    server.run_seconds = 30
    run = Run(60)
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(_outcome(engine(server.url), run)))
    worker.start()
    wait_until(lambda: server.running_id() is not None)
    ours = server.running_id()
    run.cancel()
    worker.join(5)
    assert done == [GenerationCanceled]
    assert server.interrupts == [{"prompt_id": ours}]
    wait_until(lambda: server.history_of(ours) is not None)
    assert server.history_of(ours)["status"]["messages"][-1][0] == "execution_interrupted"  # type: ignore[index]


def test_cancel_of_a_pending_prompt_removes_it_from_the_queue_without_interrupting_another_clients(
    server,
) -> None:
    server.run_seconds = 30
    theirs = server.queue_foreign(
        WORKFLOW | {"6": {"class_type": "CLIPTextEncode", "inputs": {"text": "theirs"}}}
    )
    wait_until(lambda: server.running_id() == theirs)
    run = Run(60)
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(_outcome(engine(server.url), run)))
    worker.start()
    wait_until(lambda: len(server.prompts) == 2)
    run.cancel()
    worker.join(5)
    assert done == [GenerationCanceled]
    assert server.interrupts == [] and server.running_id() == theirs
    queue = [e for e in server.exchanges if e.method == "POST" and e.path == "/queue"]
    assert [e.json for e in queue] == [{"delete": [p for p in server.prompts if p != theirs]}]


def test_a_prompt_that_outlives_the_deadline_is_interrupted_and_transient(server) -> None:
    server.run_seconds = 30
    late = failure(lambda: engine(server.url).generate(REQUEST, Run(0.5)))
    assert late.transient and late.message == "ComfyUI did not finish the image in time"
    assert len(server.interrupts) == 1


def test_an_output_that_is_not_an_image_or_not_there_is_the_deployments_failure(server) -> None:
    server.view_reply = Reply(404)
    gone = failure(lambda: engine(server.url).generate(REQUEST, Run(10)))
    assert gone.failure is Failure.DEPLOYMENT and gone.message == "the ComfyUI server answered 404"
    server.view_reply = Reply(200, b"<html>login</html>", {"content-type": "text/html"})
    assert engine(server.url).generate(REQUEST, Run(10)) == b"<html>login</html>"  # the router refuses it


def test_the_image_is_of_the_size_the_server_made(server) -> None:
    server.image_size = (768, 768)
    assert size_of(engine(server.url).generate(REQUEST, Run(10))) == (768, 768)  # refused by the router


def test_an_unreachable_server_is_transient() -> None:
    assert failure(lambda: engine(closed_port()).generate(REQUEST, Run(5))).transient


def _outcome(comfy: ComfyUIEngine, run: Run) -> object:
    try:
        return comfy.generate(REQUEST, run)
    except GenerationCanceled:
        return GenerationCanceled
