"""Messages from remote servers, made fit for the user's eyes.

An engine's error text ends up in the generation's `error`, which the user (and webhooks) read. A
remote server's message can name internal hosts, file paths on the GPU box, or echo a credential;
those are replaced by placeholders and the message is cut to a bounded length.
"""

from __future__ import annotations

import re

MAX_LENGTH = 500

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\bbearer\s+\S+"), "Bearer [redacted]"),
    (re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_-]{8,}"), "[redacted]"),
    (re.compile(r"(?i)\b(api[_-]?key|token|secret|password)=[^\s&]+"), r"\1=[redacted]"),
    (re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://\S+"), "[url]"),
    (re.compile(r"\[?\b[0-9a-fA-F:]*:[0-9a-fA-F:]+\]?:\d{2,5}\b"), "[address]"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b"), "[address]"),
    (re.compile(r"\b[\w-]+(?:\.[\w-]+)*:\d{2,5}\b"), "[address]"),
    (re.compile(r"(?<![\w\]])(?:[A-Za-z]:\\|/)(?:[\w.@-]+[\\/])+[\w.@-]*"), "[path]"),
)


def clean_message(text: str, secrets: tuple[str, ...] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    text = " ".join(text.split())  # remote tracebacks span lines; `error` is one line
    return text if len(text) <= MAX_LENGTH else text[: MAX_LENGTH - 1] + "…"
