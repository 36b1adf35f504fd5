"""The settings every deployment shares, validated when a binding is set (never at job time).

Each engine subclasses `EngineSettings` (or `HttpSettings`) with its own fields. Unknown fields are
refused rather than ignored: a misspelt `timout_s` silently falling back to the default is the kind
of mistake that only shows at 3 a.m.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from imagegen.engines import errors
from imagegen.engines.template import DEFAULT, check_template

SIZE = re.compile(r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MiB = 1024 * 1024


class EngineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, min_length=1, max_length=200, description="the engine's own model name")
    prompt_template: str = Field(DEFAULT, max_length=2000)
    size_map: dict[str, str] = Field(
        default_factory=dict, description="catalog size -> size asked of the engine"
    )
    resize: bool = Field(False, description="resize an image of another size to the requested one")
    timeout_s: float = Field(120.0, gt=0, le=3600, description="one attempt's time limit")
    concurrency: int = Field(1, ge=1, le=256, description="generations at once on this deployment")

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value)

    @field_validator("size_map")
    @classmethod
    def _sizes(cls, value: dict[str, str]) -> dict[str, str]:
        for size in (*value, *value.values()):
            if not SIZE.fullmatch(size):
                raise ValueError(f"{size!r} is not a size like 1024x1024")
        return value

    @model_validator(mode="after")
    def _resize_needed(self) -> EngineSettings:
        # A mapping to another size makes every image the wrong size: refuse it now, not per job.
        changed = sorted(f"{a} -> {b}" for a, b in self.size_map.items() if a != b)
        if changed and not self.resize:
            raise ValueError(f"size_map changes sizes ({', '.join(changed)}): that needs resize: true")
        return self

    def engine_size(self, size: str) -> str:
        return self.size_map.get(size, size)


class HttpSettings(EngineSettings):
    """A deployment on another machine: where it is, and which environment variable holds its key."""

    base_url: str = Field(..., max_length=500)
    api_key_env: str | None = Field(
        None, max_length=100, description="the NAME of the environment variable holding the key"
    )
    max_image_bytes: int = Field(32 * MiB, ge=1024, le=512 * MiB)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        if url.userinfo:
            raise ValueError("must not carry credentials: name them with api_key_env")
        if url.query or url.fragment:
            raise ValueError("must not have a query or a fragment")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.fullmatch(value):
            raise ValueError("must be the name of an environment variable (letters, digits, _), not a key")
        return value

    def api_key(self, environ: Mapping[str, str]) -> str | None:
        """The key from this process's environment, read when the engine is built."""
        if self.api_key_env is None:
            return None
        key = environ.get(self.api_key_env)
        if not key:
            raise errors.deployment(f"the environment variable {self.api_key_env} is not set on this worker")
        return key
