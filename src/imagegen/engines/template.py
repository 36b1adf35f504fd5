"""Prompt templates: how a deployment turns prompt, style and color into the engine's prompt.

`str.format` over a fixed set of names, checked when the template is set: an unknown name, a
positional `{}`, attribute or index access (`{prompt.__class__}`), a conversion or a nested field
is refused, so a template an operator stores can never reach anything but these strings.
"""

from __future__ import annotations

import string

from imagegen.engines.request import ImageRequest

NAMES = ("prompt", "style", "color", "size", "width", "height", "model")
DEFAULT = "{prompt}, {style} style, {color} colors"


def check_template(template: str) -> str:
    """The template unchanged, or ValueError saying what is wrong with it."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc} (write {{{{ and }}}} for literal braces)") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in NAMES:
            raise ValueError(f"unknown placeholder {{{name}}}; the known ones are {_listed()}")
        if conversion:
            raise ValueError(f"placeholder {{{name}}} may not have a conversion (!{conversion})")
        if spec and "{" in spec:
            raise ValueError(f"placeholder {{{name}}} may not nest another placeholder")
    return template


def render(template: str, request: ImageRequest, engine_model: str | None = None) -> str:
    width, height = request.dimensions
    values = {
        "prompt": request.prompt,
        "style": request.style,
        "color": request.color,
        "size": request.size,
        "width": width,
        "height": height,
        "model": engine_model or request.model,
    }
    # An empty prompt (it is optional) leaves a dangling separator at the front: trim it.
    return template.format_map(values).strip(" ,;")


def _listed() -> str:
    return ", ".join(f"{{{name}}}" for name in NAMES)
