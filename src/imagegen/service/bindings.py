"""A model's binding to engines and its own prices, edited at run time (admin API, CLI, import).

A binding is validated when it is set, with the process's engine registry and the catalog's sizes
(`engines.binding.parse_binding`), and stored as the JSON it normalizes to; jobs read it with the
model's settings before they generate, so an edit is in effect on the next job in every process.
Like every catalog edit it changes the configuration version.

Credentials are never stored: a deployment names the environment variable holding its key
(`api_key_env`), and a binding in which a field is named like a credential, or a value looks like
one (`sk-...`, `Bearer ...`, `key=...`), is refused before anything is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace
from typing import Any

from imagegen.domain.catalog import ModelSettings
from imagegen.domain.errors import InvalidBinding, ModelNotFound
from imagegen.domain.validation import Problem, parse_prices
from imagegen.engines.binding import parse_binding
from imagegen.engines.registry import Registry
from imagegen.ports import CatalogStore

# A field whose name is, or ends in, a credential's name: `api_key`, `x-api-key`, `hf_token`,
# `client_secret`; not `token_normalization` (a ComfyUI node's input) or `max_tokens`.
SECRET_FIELD = re.compile(
    r"(?i)(.*[_-])?(api[_-]?key|apikey|secret|password|passwd|token|authorization|credentials?|bearer)"
)
SECRET_VALUE = re.compile(
    r"(?i)(\bbearer\s+\S{8,}|\b(?:sk|rk|pk)-[A-Za-z0-9_-]{8,}|\b(api[_-]?key|token|secret|password)=[^\s&]+)"
)
ALLOWED_FIELDS = frozenset({"api_key_env"})  # names a variable, checked by the engine's settings
CREDENTIAL = "looks like a credential: keys are never stored, name the variable holding it in api_key_env"
MAX_DEPTH = 16  # binding -> deployments -> settings -> workflow -> node -> inputs -> [link]: 7
MAX_BINDING_BYTES = 256 * 1024
RESERVED_KEY = re.compile(r"__.*__")


async def model_settings(storage: CatalogStore, name: str) -> ModelSettings:
    """A catalog model as stored (enabled or not), or ModelNotFound."""
    found = await storage.model_settings(name)
    if found is None:
        raise ModelNotFound(name[:80])
    return found


async def bind_model(storage: CatalogStore, registry: Registry, name: str, data: object) -> ModelSettings:
    """Binds `name` to the deployments in `data` ({"deployments": [...]}), replacing its binding."""
    catalog = await storage.catalog()
    if name not in catalog.models:
        raise ModelNotFound(name[:80])
    deployments = binding_deployments(name, data, registry, catalog.sizes)
    return await storage.update_model(name, _replacing(name, deployments=deployments))


def binding_deployments(
    name: str, data: object, registry: Registry, sizes: Collection[str] | None
) -> tuple[dict[str, Any], ...]:
    """The deployments to store for `data`: validated, normalized, free of credentials."""
    unstorable = storable_problems(data)
    if unstorable:
        raise InvalidBinding(f"Invalid binding for model '{name}'", model=name, problems=unstorable)
    problems = list(credential_problems(data))
    try:
        binding = parse_binding(name, data, registry, sizes=sizes)
    except InvalidBinding as exc:
        named = {p.field for p in problems}
        problems += [p for p in exc.details["problems"] if p.field not in named]  # type: ignore[attr-defined]
    if problems:
        raise InvalidBinding(f"Invalid binding for model '{name}'", model=name, problems=problems)
    return tuple(binding.to_json()["deployments"])


async def unbind_model(storage: CatalogStore, name: str) -> ModelSettings:
    """Drops the binding: the model runs the simulated engine again, with its failure rate."""
    return await storage.update_model(name, _replacing(name, deployments=()))


async def set_prices(storage: CatalogStore, name: str, data: object) -> ModelSettings:
    """Replaces the model's own prices ({size: credits}; {} charges every size its cost)."""
    catalog = await storage.catalog()
    if name not in catalog.models:
        raise ModelNotFound(name[:80])
    prices = parse_prices(name, data, catalog.sizes)
    return await storage.update_model(name, _replacing(name, prices=prices))


def _replacing(name: str, **fields: Any) -> Callable[[ModelSettings | None], ModelSettings]:
    """The change that sets `fields` on the stored model, read in the write's own transaction."""

    def change(current: ModelSettings | None) -> ModelSettings:
        if current is None:  # removed since it was looked up
            raise ModelNotFound(name[:80])
        return replace(current, **fields)

    return change


def storable_problems(data: object) -> list[Problem]:
    """What would make a binding unstorable on some backend, refused alike on all of them.

    Firestore nests maps 20 deep at most, stores no array directly inside an array, reserves
    `__names__` and empty field names and keeps a document under 1 MiB; PostgreSQL's text
    refuses NUL.
    """
    try:
        text = json.dumps(data, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return [Problem("deployments", "must be plain JSON")]
    if len(text.encode()) > MAX_BINDING_BYTES:
        return [Problem("deployments", f"is over {MAX_BINDING_BYTES // 1024} KiB of JSON")]
    problems: list[Problem] = []
    stack: list[tuple[object, str, int]] = [(data, "", 0)]
    while stack and not problems:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            problems.append(Problem(where, f"is nested more than {MAX_DEPTH} deep"))
        elif isinstance(value, dict):
            for key, item in value.items():
                field = f"{where}.{key}" if where else str(key)
                if not key or RESERVED_KEY.fullmatch(key) or "\x00" in key:
                    problems.append(Problem(field, "is not a field name that can be stored"))
                stack.append((item, field, depth + 1))
        elif isinstance(value, list):
            if any(isinstance(item, list) for item in value):
                problems.append(Problem(where, "must not hold an array directly inside an array"))
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str) and "\x00" in value:
            problems.append(Problem(where, "must not contain NUL characters"))
    return problems


def credential_problems(data: object, where: str = "") -> Iterator[Problem]:
    """Fields named like a credential, and values that look like one, anywhere in `data`."""
    if isinstance(data, dict):
        for key, value in data.items():
            field = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and key not in ALLOWED_FIELDS and SECRET_FIELD.fullmatch(key):
                yield Problem(field, CREDENTIAL)
            else:
                yield from credential_problems(value, field)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from credential_problems(value, f"{where}[{index}]")
    elif isinstance(data, str) and SECRET_VALUE.search(data):
        yield Problem(where, CREDENTIAL)
