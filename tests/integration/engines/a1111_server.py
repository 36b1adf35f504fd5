"""A local server speaking AUTOMATIC1111's API, as its modules/api/api.py and modules/progress.py
define it.

`POST /sdapi/v1/txt2img` waits for the one generation slot (A1111's queue lock), then runs `steps`
sampling steps of `step_seconds` each and answers {"images": [base64], "parameters", "info"};
an interrupt ends the steps early and, as A1111 does, still answers with the image so far.
`POST /internal/progress {id_task}` says whether the task named by `force_task_id` is queued,
active or completed (404 when started as `webui=False`, like `--nowebui`); `GET /sdapi/v1/progress`
reports whatever runs; `POST /sdapi/v1/interrupt` stops whatever runs. Errors: 500 with
{"error", "detail", "body", "errors"}; 401 {"detail"} under `--api-auth`. Not covered: img2img,
scripts and extensions, real model loading.
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

from tests.integration.engines.images import png
from tests.integration.engines.protocol import Exchange, ProtocolServer, Reply


class A1111Server(ProtocolServer):
    def __init__(self, *, step_seconds: float = 0.005, webui: bool = True, auth: str | None = None) -> None:
        super().__init__(self.answer)
        self.step_seconds = step_seconds
        self.webui = webui
        self.auth = auth
        self.fail_with: Reply | None = None  # the next txt2img's answer
        self.bodies: list[dict[str, Any]] = []
        self.interrupts = 0
        self._slot = threading.Lock()  # A1111 runs one generation at a time
        self._state = threading.Lock()
        self._interrupted = threading.Event()
        self.pending: list[str] = []
        self.current: str | None = None
        self.finished: set[str] = set()
        self._step, self._steps = 0, 0

    def __exit__(self, *exc: object) -> None:
        self._interrupted.set()  # ends a generation still running, so its thread ends with us
        super().__exit__(*exc)

    def answer(self, exchange: Exchange) -> Reply:
        if self.auth is not None and exchange.headers.get("authorization") != _basic(self.auth):
            return Reply.json({"detail": "Incorrect username or password"}, 401)
        route = (exchange.method, exchange.path)
        if route == ("POST", "/sdapi/v1/txt2img"):
            return self._txt2img(exchange.json)
        if route == ("POST", "/internal/progress") and self.webui:
            return Reply.json(self._task_progress(exchange.json["id_task"]))
        if route == ("GET", "/sdapi/v1/progress"):
            with self._state:
                progress = self._step / self._steps if self.current and self._steps else 0
                state = {
                    "job_count": 1 if self.current else 0,
                    "sampling_step": self._step,
                    "sampling_steps": self._steps,
                }
            return Reply.json(
                {"progress": progress, "eta_relative": 0, "state": state, "current_image": None}
            )
        if route == ("POST", "/sdapi/v1/interrupt"):
            self.interrupts += 1
            self._interrupted.set()
            return Reply.json({})
        return Reply.json({"detail": "Not Found"}, 404)

    def _txt2img(self, body: dict[str, Any]) -> Reply:
        self.bodies.append(body)
        if self.fail_with is not None:
            reply, self.fail_with = self.fail_with, None
            return reply
        task = body.get("force_task_id") or f"task({len(self.bodies)})"
        with self._state:
            self.pending.append(task)
        with self._slot:
            with self._state:
                self.pending.remove(task)
                self.current, self._step, self._steps = task, 0, int(body.get("steps", 20))
            self._interrupted.clear()
            for _ in range(self._steps):
                if self._interrupted.wait(self.step_seconds):
                    break
                with self._state:
                    self._step += 1
            with self._state:
                self.current = None
                self.finished.add(task)
        image = base64.b64encode(png(int(body["width"]), int(body["height"]), "green")).decode()
        return Reply.json(
            {"images": [image], "parameters": body, "info": json.dumps({"seed": body.get("seed")})}
        )

    def _task_progress(self, task: str) -> dict[str, Any]:
        with self._state:
            active, queued, completed = task == self.current, task in self.pending, task in self.finished
            progress = self._step / self._steps if active and self._steps else None
        return {
            "active": active,
            "queued": queued,
            "completed": completed,
            "progress": progress,
            "eta": None,
            "live_preview": None,
            "id_live_preview": -1,
            "textinfo": None,
        }


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def out_of_memory() -> Reply:
    errors = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8.00 GiB total capacity)"
    return Reply.json({"error": "OutOfMemoryError", "detail": "", "body": "", "errors": errors}, 500)
