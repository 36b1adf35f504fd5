"""ComfyUI workflow templates: an API-format workflow whose `{{name}}` placeholders imagegen fills.

A string value that is exactly one placeholder becomes the value itself, typed (`"{{width}}"` ->
1024, so a node gets the integer it expects); a placeholder inside longer text is substituted as
text. Placeholders are checked when the binding is set: an unknown name is refused, and so is a
workflow that never uses `{{prompt}}` (every image would ignore what the user asked for).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
NAMES = ("prompt", "negative_prompt", "width", "height", "seed", "model", "style", "color")


def check_workflow(workflow: dict[str, Any]) -> dict[str, Any]:
    if not workflow:
        raise ValueError("the workflow has no nodes")
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise ValueError(f"node {node_id!r} is not an API-format node (class_type and inputs)")
        if not isinstance(node.get("inputs", {}), dict):
            raise ValueError(f"node {node_id!r}: inputs must be an object")
    used = set(placeholders(workflow))
    unknown = sorted(used - set(NAMES))
    if unknown:
        known = ", ".join(f"{{{{{n}}}}}" for n in NAMES)
        raise ValueError(f"unknown placeholders {', '.join(unknown)}; the known ones are {known}")
    if "prompt" not in used:
        raise ValueError("the workflow never uses {{prompt}}")
    return workflow


def placeholders(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield from PLACEHOLDER.findall(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from placeholders(item)
    elif isinstance(value, list):
        for item in value:
            yield from placeholders(item)


def filled(value: Any, values: Mapping[str, Any]) -> Any:
    """A copy of the workflow with every placeholder replaced."""
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole:
            return values[whole.group(1)]
        return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
    if isinstance(value, dict):
        return {key: filled(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [filled(item, values) for item in value]
    return value
