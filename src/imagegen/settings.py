"""All of imagegen's settings in one typed object, read from the environment (IMAGEGEN_*).

Nothing reads the environment at import time: `Settings()` is built by the composition root (the CLI
or `create_app`) and passed down.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegen.domain.webhooks import secret_is_valid as webhook_secret_is_valid


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Images, the SQLite file and the key file live here")
    database_url: str | None = Field(
        None,
        description="sqlite:///path, postgresql://user@host/db or firestore://PROJECT[/DATABASE]; "
        "default sqlite:///<data_dir>/imagegen.db",
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    public_url: str | None = Field(
        None, description="Base URL for imageUrl (default: the URL the client called)"
    )
    image_store_url: str | None = Field(
        None,
        description="Where images are kept: a folder path, file:///path, or "
        "s3://bucket/prefix?endpoint_url=http(s)://host:port&region=name (default: <data_dir>/images)",
    )
    role: Literal["all", "api", "worker", "scheduler"] = Field(
        "all", description="What this process runs: the HTTP API, job workers, the report scheduler, or all"
    )
    processes: int = Field(1, ge=1, le=64, description="HTTP API processes (uvicorn workers)")
    no_auth: bool = Field(False, description="Skip API keys; only on a loopback address")
    workers: int = Field(4, ge=0, le=256, description="Job workers in this process")

    # The case study's variable name, kept without our prefix so its scripts still work.
    ai_failure_rate: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        validation_alias=AliasChoices("AI_FAILURE_RATE", "IMAGEGEN_AI_FAILURE_RATE"),
    )
    model_latency_ms: int | None = Field(None, ge=0, le=600_000)

    job_lease_seconds: float = Field(30.0, gt=0)
    job_max_attempts: int = Field(3, ge=1)
    recovery_interval_seconds: float = Field(5.0, gt=0)
    poll_interval_seconds: float = Field(0.5, gt=0)
    wait_timeout_seconds: float = Field(
        60.0, ge=0, description="How long createGenerationRequest waits for the image"
    )

    max_in_flight_per_user: int = Field(
        100, ge=1, description="Generations a user may have queued or running at once (429 above)"
    )
    rate_per_user_per_second: float = Field(20.0, gt=0, description="Sustained creates per second per user")
    rate_burst_per_user: int = Field(200, ge=1, description="Creates a user may send at once")

    webhook_secret: str | None = Field(
        None, description="whsec_<base64>; default: generated once and kept in the database"
    )
    webhook_allow_private: bool = Field(
        False, description="Allow webhooks to loopback and private addresses (tests, private networks)"
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    webhook_max_retry_seconds: float = Field(3600.0, gt=0, description="Retry a delivery this long")
    webhook_poll_seconds: float = Field(0.5, gt=0)
    idempotency_retention_hours: float = Field(24.0, ge=1, description="Idempotency keys are kept this long")

    report_cron: str = Field(
        "0 0 * * 1", description="When the weekly report runs (UTC; cron, 5 or 6 fields)"
    )
    report_catch_up_weeks: int = Field(
        52, ge=1, description="How far back missed weekly reports are caught up"
    )

    max_prompt_length: int = Field(1000, ge=1)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, le=1024 * 1024, description="Request line and headers together (431 above)"
    )
    max_headers: int = Field(100, ge=8, le=10_000, description="Request header lines (431 above)")
    header_timeout_seconds: float = Field(
        10.0, gt=0, le=600, description="A request's headers must arrive within this (408 after)"
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="A request's body must arrive within this of its headers (408)"
    )
    keep_alive_seconds: int = Field(5, ge=1, le=600, description="An idle keep-alive connection is closed")
    max_page_size: int = Field(200, ge=1)
    bench_routes: bool = Field(
        False, description="Serve POST /_bench/noop, a route that does nothing: the benchmarks' ceiling"
    )
    default_page_size: int = Field(50, ge=1)
    key_use_interval_seconds: float = Field(
        60.0, gt=0, le=3600, description="How often a process writes its keys' last use (lastUsedAt)"
    )

    @field_validator("webhook_secret")
    @classmethod
    def _signing_key(cls, secret: str | None) -> str | None:
        if secret is not None and not webhook_secret_is_valid(secret):
            raise ValueError(
                "IMAGEGEN_WEBHOOK_SECRET must be whsec_ followed by a base64 key of 24 bytes or more"
            )
        return secret

    @model_validator(mode="after")
    def _refuse_public_no_auth(self) -> Settings:
        if self.no_auth and not is_loopback(self.host):
            raise ValueError(
                f"--no-auth serves without API keys and only binds to a loopback address; "
                f"'{self.host}' is not one (use 127.0.0.1 or ::1, or turn auth on)"
            )
        return self

    @property
    def serves_http(self) -> bool:
        return self.role in ("all", "api")

    @property
    def runs_jobs(self) -> bool:
        return self.role in ("all", "worker")

    @property
    def runs_scheduler(self) -> bool:
        return self.role in ("all", "scheduler")

    @property
    def sql_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'imagegen.db'}"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def keys_file(self) -> Path:
        return self.data_dir / "initial-keys.txt"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
