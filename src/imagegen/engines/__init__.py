"""Image engines: the port, the registry of engines found through entry points, routing with
fallbacks, and the built-in engines (simulated, openai, comfyui, automatic1111).

See docs/engines.md. What a worker calls is `Fleet.generate(binding, request, run)`.
"""

from imagegen.engines.binding import Deployment, ModelBinding, parse_binding
from imagegen.engines.errors import EngineError, Failure, GenerationCanceled
from imagegen.engines.fleet import Fleet
from imagegen.engines.port import Engine, EngineKind
from imagegen.engines.registry import Registry
from imagegen.engines.request import ImageRequest
from imagegen.engines.run import Run
from imagegen.engines.settings import EngineSettings, HttpSettings

__all__ = [
    "Deployment",
    "Engine",
    "EngineError",
    "EngineKind",
    "EngineSettings",
    "Failure",
    "Fleet",
    "GenerationCanceled",
    "HttpSettings",
    "ImageRequest",
    "ModelBinding",
    "Registry",
    "Run",
    "parse_binding",
]
