"""A local server speaking ComfyUI's HTTP API, as its server.py and execution.py define it.

`POST /prompt {prompt, client_id}` validates the workflow (400 with `error` and `node_errors`) and
queues it; one executor thread runs the queue in order, a prompt taking `run_seconds`;
`GET /history/{id}` is {} until the prompt ends, then {id: {prompt, outputs, status}};
`GET /view` serves the outputs; `GET /queue` lists running and pending items as
[number, prompt_id, prompt, extra_data, outputs]; `POST /interrupt {prompt_id}` stops only that
prompt if it runs (no prompt_id: whatever runs), `POST /queue {delete: [...]}` drops pending ones.
An image is as large as the workflow's width and height inputs. Not covered: the websocket (/ws),
uploads, node definitions (/object_info), and real node semantics (links are not followed).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from tests.integration.engines.images import png
from tests.integration.engines.protocol import Exchange, ProtocolServer, Reply

KNOWN_NODES = {
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "EmptyLatentImage",
    "KSampler",
    "VAEDecode",
    "SaveImage",
}
OUTPUT_NODES = {"SaveImage"}


class ComfyUIServer(ProtocolServer):
    def __init__(self, run_seconds: float = 0.05) -> None:
        super().__init__(self.answer)
        self.run_seconds = run_seconds
        self.execution_error: tuple[str, str] | None = None  # (exception_type, message) for the next run
        self.image_size: tuple[int, int] | None = None  # answer another size than the workflow's
        self.view_reply: Reply | None = None  # answer /view this way instead
        self.prompts: dict[str, dict[str, Any]] = {}  # every prompt queued, by id
        self.interrupts: list[Any] = []  # the bodies of POST /interrupt
        self._lock = threading.Condition()
        self._pending: list[list[Any]] = []
        self._running: list[Any] | None = None
        self._interrupted = threading.Event()
        self._history: dict[str, dict[str, Any]] = {}
        self._files: dict[str, bytes] = {}
        self._number = 0
        self._executor = threading.Thread(target=self._execute_forever, daemon=True, name="comfyui-executor")

    def __enter__(self) -> ComfyUIServer:
        super().__enter__()
        self._executor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.stopping.set()
            self._lock.notify_all()
        self._interrupted.set()
        super().__exit__(*exc)
        self._executor.join(5)

    def queue_foreign(self, workflow: dict[str, Any]) -> str:
        """Another client's prompt (a person using the same ComfyUI)."""
        return self._put(workflow, {"client_id": "someone-else"})

    def running_id(self) -> str | None:
        with self._lock:
            return self._running[1] if self._running else None

    def history_of(self, prompt_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._history.get(prompt_id)

    # --- routes ---------------------------------------------------------------------------------

    def answer(self, exchange: Exchange) -> Reply:
        route = (exchange.method, exchange.path)
        if route == ("POST", "/prompt"):
            return self._post_prompt(exchange.json or {})
        if exchange.method == "GET" and exchange.path.startswith("/history/"):
            prompt_id = exchange.path.removeprefix("/history/")
            entry = self.history_of(prompt_id)
            return Reply.json({prompt_id: entry} if entry else {})
        if route == ("GET", "/queue"):
            with self._lock:
                running = [self._running] if self._running else []
                return Reply.json({"queue_running": running, "queue_pending": list(self._pending)})
        if route == ("POST", "/interrupt"):
            return self._interrupt(exchange)
        if route == ("POST", "/queue"):
            with self._lock:
                doomed = set((exchange.json or {}).get("delete", []))
                self._pending = [item for item in self._pending if item[1] not in doomed]
            return Reply(200)
        if route == ("GET", "/view"):
            if self.view_reply is not None:
                return self.view_reply
            data = self._files.get(exchange.query.get("filename", ""))
            ok = data is not None and exchange.query.get("type") == "output"
            return Reply(200, data, {"content-type": "image/png"}) if ok and data else Reply(404)
        return Reply(404)

    def _post_prompt(self, body: dict[str, Any]) -> Reply:
        workflow = body.get("prompt")
        if not isinstance(workflow, dict):
            return Reply.json(
                {"error": {"type": "no_prompt", "message": "No prompt provided"}, "node_errors": {}}, 400
            )
        problem = _validate(workflow)
        if problem is not None:
            return Reply.json(problem, 400)
        prompt_id = self._put(workflow, {"client_id": body.get("client_id")})
        return Reply.json({"prompt_id": prompt_id, "number": self._number - 1, "node_errors": {}})

    def _interrupt(self, exchange: Exchange) -> Reply:
        body = exchange.json or {}
        self.interrupts.append(body)
        with self._lock:
            running = self._running[1] if self._running else None
        if running is not None and body.get("prompt_id") in (None, running):
            self._interrupted.set()
        return Reply(200)

    # --- the executor ---------------------------------------------------------------------------

    def _put(self, workflow: dict[str, Any], extra: dict[str, Any]) -> str:
        prompt_id = str(uuid.uuid4())
        outputs = [node for node, n in workflow.items() if n["class_type"] in OUTPUT_NODES]
        with self._lock:
            self._pending.append([self._number, prompt_id, workflow, extra, outputs])
            self._number += 1
            self.prompts[prompt_id] = workflow
            self._lock.notify_all()
        return prompt_id

    def _execute_forever(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self.stopping.is_set():
                    self._lock.wait()
                if self.stopping.is_set():
                    return
                self._running = self._pending.pop(0)
                self._interrupted.clear()
            item = self._running
            interrupted = self._interrupted.wait(self.run_seconds)
            entry = self._finish(item, interrupted)
            with self._lock:
                self._history[item[1]] = entry
                self._running = None

    def _finish(self, item: list[Any], interrupted: bool) -> dict[str, Any]:
        prompt_id, workflow = item[1], item[2]
        start = ["execution_start", {"prompt_id": prompt_id}]
        if interrupted:
            stop = [
                "execution_interrupted",
                {"prompt_id": prompt_id, "node_id": "3", "node_type": "KSampler"},
            ]
            return _entry(item, {}, "error", [start, stop])
        if self.execution_error is not None:
            kind, message = self.execution_error
            self.execution_error = None
            failed = {"prompt_id": prompt_id, "node_id": "3", "node_type": "KSampler"}
            failed |= {"exception_type": kind, "exception_message": message, "traceback": []}
            return _entry(item, {}, "error", [start, ["execution_error", failed]])
        width, height = self.image_size or _size(workflow)
        outputs = {}
        for node in item[4]:
            name = f"ComfyUI_{len(self._files) + 1:05}_.png"
            self._files[name] = png(width, height, "purple")
            outputs[node] = {"images": [{"filename": name, "subfolder": "", "type": "output"}]}
        return _entry(item, outputs, "success", [start, ["execution_success", {"prompt_id": prompt_id}]])


def _entry(item: list[Any], outputs: dict[str, Any], status: str, messages: list[Any]) -> dict[str, Any]:
    return {
        "prompt": item,
        "outputs": outputs,
        "status": {"status_str": status, "completed": status == "success", "messages": messages},
    }


def _validate(workflow: dict[str, Any]) -> dict[str, Any] | None:
    for node_id, node in workflow.items():
        if node.get("class_type") not in KNOWN_NODES:
            message = f"Cannot execute because node {node.get('class_type')} does not exist."
            error = {"type": "invalid_prompt", "message": message, "details": f"Node ID '#{node_id}'"}
            return {"error": error, "node_errors": {}}
    if not any(node["class_type"] in OUTPUT_NODES for node in workflow.values()):
        return {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs"}, "node_errors": []}
    node_errors = {}
    for node_id, node in workflow.items():
        for name in ("width", "height", "seed"):
            value = node.get("inputs", {}).get(name)
            if value is not None and not isinstance(value, int):
                problem = {
                    "type": "invalid_input_type",
                    "message": "Failed to convert an input value to a INT value",
                }
                problem["details"] = f"{name}, {value}"
                node_errors[node_id] = {
                    "errors": [problem],
                    "dependent_outputs": [],
                    "class_type": node["class_type"],
                }
    if node_errors:
        error = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"}
        return {"error": error, "node_errors": node_errors}
    return None


def _size(workflow: dict[str, Any]) -> tuple[int, int]:
    for node in workflow.values():
        inputs = node.get("inputs", {})
        if isinstance(inputs.get("width"), int) and isinstance(inputs.get("height"), int):
            return inputs["width"], inputs["height"]
    return 512, 512


# A text-to-image workflow in ComfyUI's API format, with imagegen's placeholders.
WORKFLOW: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "{{model}}"}},
    "5": {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1},
    },
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{negative_prompt}}", "clip": ["4", 1]}},
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": "{{seed}}",
            "steps": 20,
            "cfg": 7,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "imagegen", "images": ["8", 0]}},
}
