"""The ComfyUI engine, to the routes of ComfyUI's server.py.

`POST /prompt {prompt: workflow, client_id}` queues the filled workflow (a 400 carries `error` and
`node_errors`); `GET /history/{prompt_id}` is empty until the prompt ends, then holds its `outputs`
and `status`; `GET /view?filename=&subfolder=&type=` serves an output image. To cancel, `GET /queue`
says whether our prompt is running (then `POST /interrupt {prompt_id}`, which newer servers apply
only to that prompt) or pending (then `POST /queue {delete: [prompt_id]}`): another client's running
prompt is never interrupted. ComfyUI reports step progress only on its websocket, which this engine
does not read: progress is 0 until the image is there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import Field, field_validator, model_validator

from imagegen.engines import errors, transport
from imagegen.engines.comfyui_workflow import check_workflow, filled, placeholders
from imagegen.engines.errors import EngineError, GenerationCanceled
from imagegen.engines.port import EngineKind
from imagegen.engines.request import ImageRequest
from imagegen.engines.run import Run
from imagegen.engines.settings import HttpSettings
from imagegen.engines.template import render

log = logging.getLogger("imagegen.engines.comfyui")
SERVER = "ComfyUI"
STOP_TIMEOUT_S = 5.0


class ComfyUISettings(HttpSettings):
    workflow: dict[str, Any] = Field(..., description="API-format workflow with {{placeholders}}")
    negative_prompt: str = Field("", max_length=2000)
    output_node: str | None = Field(None, description="the node whose images to take (default: the first)")
    poll_interval_s: float = Field(0.5, ge=0.01, le=10)

    @field_validator("workflow")
    @classmethod
    def _workflow(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_workflow(value)

    @model_validator(mode="after")
    def _references(self) -> ComfyUISettings:
        if self.output_node is not None and self.output_node not in self.workflow:
            raise ValueError(f"output_node {self.output_node!r} is not a node of the workflow")
        if "model" in set(placeholders(self.workflow)) and self.model is None:
            raise ValueError("the workflow uses {{model}}: set model (the checkpoint's file name)")
        return self


class ComfyUIEngine:
    def __init__(self, settings: ComfyUISettings, environ: Mapping[str, str]) -> None:
        self._settings = settings
        key = settings.api_key(environ)  # ComfyUI has no auth of its own; a proxy in front may
        self._secrets = (key,) if key else ()
        self._http = transport.client(settings, {"Authorization": f"Bearer {key}"} if key else None)

    def generate(self, request: ImageRequest, run: Run) -> bytes:
        prompt_id = self._queue(request, run)
        try:
            entry = self._wait(prompt_id, run)
        except (GenerationCanceled, EngineError) as exc:
            if isinstance(exc, GenerationCanceled) or run.expired:
                self._stop(prompt_id)  # free the GPU for the next job, ours or not
            raise
        image = self._output(entry)
        params = {
            "filename": image["filename"],
            "subfolder": image.get("subfolder", ""),
            "type": image.get("type", "output"),
        }
        return transport.download(
            self._http, "/view", params, run, max_bytes=self._settings.max_image_bytes, server=SERVER
        )

    def _queue(self, request: ImageRequest, run: Run) -> str:
        s = self._settings
        width, height = (int(side) for side in s.engine_size(request.size).split("x"))
        values = {
            "prompt": render(s.prompt_template, request, s.model),
            "negative_prompt": s.negative_prompt,
            "width": width,
            "height": height,
            "seed": request.seed,
            "model": s.model,
            "style": request.style,
            "color": request.color,
        }
        body = {"prompt": filled(s.workflow, values), "client_id": f"imagegen-{request.id}"}
        with transport.translated(SERVER, self._secrets):
            response = self._http.post("/prompt", json=body, timeout=transport.timeout(run))
        if response.status_code == 400 and isinstance(refused := transport.body_of(response), dict):
            raise errors.deployment(
                f"ComfyUI refused the workflow: {_refusal(refused)}", secrets=self._secrets
            )
        if response.status_code != 200:
            raise transport.error_status(response, SERVER, None, self._secrets)
        answer = transport.json_of(response, SERVER)
        if not isinstance(answer, dict) or not isinstance(answer.get("prompt_id"), str):
            raise errors.deployment("ComfyUI's answer to /prompt has no prompt_id")
        return str(answer["prompt_id"])

    def _wait(self, prompt_id: str, run: Run) -> dict[str, Any]:
        """The prompt's history entry, once it has one (ComfyUI writes it when the prompt ends)."""
        while True:
            if run.canceled:
                raise GenerationCanceled()
            if run.expired:
                raise errors.transient("ComfyUI did not finish the image in time")
            with transport.translated(SERVER, self._secrets):
                response = self._http.get(f"/history/{prompt_id}", timeout=transport.timeout(run))
            if response.status_code != 200:
                raise transport.error_status(response, SERVER, None, self._secrets)
            history = transport.json_of(response, SERVER)
            entry = history.get(prompt_id) if isinstance(history, dict) else None
            if isinstance(entry, dict):
                return entry
            run.wait(self._settings.poll_interval_s)

    def _output(self, entry: dict[str, Any]) -> dict[str, Any]:
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            raise _execution_error(status.get("messages") or [], self._secrets)
        outputs = entry.get("outputs") or {}
        wanted = self._settings.output_node
        nodes = [wanted] if wanted is not None else list(outputs)
        for node in nodes:
            images = (outputs.get(node) or {}).get("images") or []
            for image in images:
                if isinstance(image, dict) and isinstance(image.get("filename"), str):
                    return image
        raise errors.deployment("ComfyUI finished the workflow without an output image")

    def _stop(self, prompt_id: str) -> None:
        """Interrupts our prompt if it runs, or takes it off the queue if it waits; best effort."""
        try:
            queue = self._http.get("/queue", timeout=STOP_TIMEOUT_S).json()
            if prompt_id in _ids(queue.get("queue_running")):
                self._http.post("/interrupt", json={"prompt_id": prompt_id}, timeout=STOP_TIMEOUT_S)
            elif prompt_id in _ids(queue.get("queue_pending")):
                self._http.post("/queue", json={"delete": [prompt_id]}, timeout=STOP_TIMEOUT_S)
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("could not stop ComfyUI prompt %s: %s", prompt_id, type(exc).__name__)

    def close(self) -> None:
        self._http.close()


def _ids(items: Any) -> set[str]:
    """Prompt ids in a /queue list: each item is [number, prompt_id, prompt, extra_data, outputs]."""
    if not isinstance(items, list):
        return set()
    return {
        item[1] for item in items if isinstance(item, list) and len(item) > 1 and isinstance(item[1], str)
    }


def _refusal(answer: dict[str, Any]) -> str:
    """One line from a /prompt 400: the error, then each node's first complaint."""
    error = answer.get("error")
    parts = [str(error.get("message") if isinstance(error, dict) else error or "invalid prompt")]
    node_errors = answer.get("node_errors")
    if isinstance(node_errors, dict):
        parts += [
            _node_problem(node_id, node) for node_id, node in node_errors.items() if isinstance(node, dict)
        ]
    return "; ".join(parts)


def _node_problem(node_id: str, node: dict[str, Any]) -> str:
    found = node.get("errors") or [{}]
    first = found[0] if isinstance(found[0], dict) else {"message": str(found[0])}
    detail = first.get("details") or first.get("message") or "invalid"
    return f"node {node_id} ({node.get('class_type', '?')}): {detail}"


def _execution_error(messages: list[Any], secrets: tuple[str, ...]) -> EngineError:
    """A failed run, from its status messages ([event, data] pairs). Out of memory may pass on a
    retry or elsewhere; a node that fails otherwise is this server's problem (a missing model...)."""
    for event, data in (m for m in messages if isinstance(m, list | tuple) and len(m) == 2):
        if event == "execution_error" and isinstance(data, dict):
            text = f"ComfyUI failed in node {data.get('node_type', '?')}: {data.get('exception_message', '')}"
            if "OutOfMemory" in str(data.get("exception_type", "")):
                return errors.transient(text, secrets=secrets)
            return errors.deployment(text, secrets=secrets)
        if event == "execution_interrupted":
            return errors.transient("the prompt was interrupted on the ComfyUI server")
    return errors.deployment("ComfyUI reports an error without details")


ENGINE = EngineKind("comfyui", ComfyUISettings, ComfyUIEngine, "a ComfyUI server running a workflow template")
