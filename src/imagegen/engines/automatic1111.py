"""The AUTOMATIC1111 (stable-diffusion-webui) engine, to the routes of its modules/api/api.py.

`POST /sdapi/v1/txt2img` blocks until the image is made and answers `{"images": [base64...]}`.
While it runs, `POST /internal/progress {id_task}` (the web UI's own route) tells whether the task
we named with `force_task_id` is queued, active or done, and how far along: so a cancel interrupts
(`POST /sdapi/v1/interrupt`, which stops whatever runs) only while our task is the active one.
A server started with `--nowebui` lacks that route: then progress comes from `GET /sdapi/v1/progress`
(whatever job runs) and a cancel interrupts only when the deployment says `exclusive: true` (this
server runs nothing but this deployment's jobs). Its `--api-auth user:password` is basic auth:
`api_key_env` names a variable holding `user:password`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import Field, field_validator

from imagegen.engines import errors, transport
from imagegen.engines.port import EngineKind
from imagegen.engines.request import ImageRequest
from imagegen.engines.run import Run
from imagegen.engines.settings import HttpSettings
from imagegen.engines.template import render
from imagegen.engines.watch import watched

log = logging.getLogger("imagegen.engines.automatic1111")
SERVER = "Automatic1111"
STOP_TIMEOUT_S = 5.0
OURS = frozenset(
    {"prompt", "negative_prompt", "width", "height", "seed", "n_iter", "batch_size", "force_task_id"}
)


class Automatic1111Settings(HttpSettings):
    negative_prompt: str = Field("", max_length=2000)
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=1, le=30)
    sampler_name: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict, description="more txt2img fields")
    exclusive: bool = Field(False, description="the server runs only this deployment's jobs")
    poll_interval_s: float = Field(0.5, ge=0.01, le=10)

    @field_validator("extra")
    @classmethod
    def _not_ours(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(OURS & set(value))
        if clash:
            raise ValueError(f"{', '.join(clash)} are set by imagegen, not in extra")
        return value


class Automatic1111Engine:
    def __init__(self, settings: Automatic1111Settings, environ: Mapping[str, str]) -> None:
        self._settings = settings
        key = settings.api_key(environ)
        self._secrets = (key,) if key else ()
        user, _, password = (key or "").partition(":")
        self._http = transport.client(settings, auth=(user, password) if key else None)
        self._task_route = True  # until the server says 404: started with --nowebui

    def generate(self, request: ImageRequest, run: Run) -> bytes:
        task = f"imagegen-{request.id}"
        response = watched(
            run,
            lambda: self._post(self._body(request, task), run),
            every=self._settings.poll_interval_s,
            tick=lambda: self._progress(task, run),
            stop=lambda: self._stop(task),
            server=SERVER,
        )
        if response.status_code != 200:
            raise transport.error_status(
                response, SERVER, _message(transport.body_of(response)), self._secrets
            )
        answer = transport.json_of(response, SERVER)
        images = answer.get("images") if isinstance(answer, dict) else None
        if not isinstance(images, list) or not images or not isinstance(images[0], str):
            raise errors.deployment("Automatic1111's answer has no image in it")
        try:
            return base64.b64decode(images[0].split(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError):
            raise errors.deployment("Automatic1111's image is not base64") from None

    def _body(self, request: ImageRequest, task: str) -> dict[str, Any]:
        s = self._settings
        width, height = (int(side) for side in s.engine_size(request.size).split("x"))
        body: dict[str, Any] = {
            **s.extra,
            "prompt": render(s.prompt_template, request, s.model),
            "negative_prompt": s.negative_prompt,
            "width": width,
            "height": height,
            "seed": request.seed,
            "steps": s.steps,
            "cfg_scale": s.cfg_scale,
            "n_iter": 1,
            "batch_size": 1,
            "force_task_id": task,
            "send_images": True,
            "save_images": False,
        }
        if s.sampler_name is not None:
            body["sampler_name"] = s.sampler_name
        if s.model is not None:
            body["override_settings"] = {**body.get("override_settings", {}), "sd_model_checkpoint": s.model}
        return body

    def _post(self, body: dict[str, Any], run: Run) -> httpx.Response:
        with transport.translated(SERVER, self._secrets):
            return self._http.post("/sdapi/v1/txt2img", json=body, timeout=transport.timeout(run))

    def _task(self, task: str) -> dict[str, Any] | None:
        """Our task's state from /internal/progress, or None where the server lacks the route."""
        if not self._task_route:
            return None
        body = {"id_task": task, "id_live_preview": -1, "live_preview": False}
        response = self._http.post("/internal/progress", json=body, timeout=STOP_TIMEOUT_S)
        if response.status_code == 404:
            self._task_route = False
            return None
        state = response.json()
        return state if isinstance(state, dict) else {}

    def _progress(self, task: str, run: Run) -> None:
        try:
            state = self._task(task)
            if state is None:
                state = self._http.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
            elif not state.get("active"):
                return
            if isinstance(state.get("progress"), int | float):
                run.progress(float(state["progress"]))
        except (httpx.HTTPError, ValueError, AttributeError) as exc:  # progress is a nicety: never fail on it
            log.debug("no progress from Automatic1111: %s", type(exc).__name__)

    def _stop(self, task: str) -> None:
        """Interrupts our task if it is the one running; if it still waits in the server's queue,
        a watcher interrupts it when it starts (A1111 has no way to take a task off its queue)."""
        try:
            state = self._task(task)
            if state is None:
                if self._settings.exclusive:
                    self._interrupt()
            elif state.get("active"):
                self._interrupt()
            elif state.get("queued"):
                threading.Thread(target=self._interrupt_when_active, args=(task,), daemon=True).start()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("could not stop Automatic1111 task %s: %s", task, type(exc).__name__)

    def _interrupt_when_active(self, task: str) -> None:
        give_up = time.monotonic() + self._settings.timeout_s
        try:
            while time.monotonic() < give_up:
                state = self._task(task) or {}
                if state.get("active"):
                    self._interrupt()
                    return
                if not state.get("queued"):
                    return
                time.sleep(self._settings.poll_interval_s)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("could not stop Automatic1111 task %s: %s", task, type(exc).__name__)

    def _interrupt(self) -> None:
        self._http.post("/sdapi/v1/interrupt", timeout=STOP_TIMEOUT_S)

    def close(self) -> None:
        self._http.close()


def _message(answer: Any) -> str | None:
    """A1111's errors: {"error": type, "errors": text} from its handler, {"detail": ...} from FastAPI."""
    if not isinstance(answer, dict):
        return None
    text = answer.get("errors") or answer.get("detail") or answer.get("error")
    return str(text) if text else None


ENGINE = EngineKind(
    "automatic1111", Automatic1111Settings, Automatic1111Engine, "an AUTOMATIC1111 web UI's API"
)
