"""Settings: one class, read from a TOML file and METERHUB_* environment variables.

Precedence, highest first: explicit arguments, environment (`METERHUB_DATABASE_URL`,
`METERHUB_DATA_DIR`, …; a section key is `METERHUB_<SECTION>_<KEY>`), the TOML file
(`--config`, else `./meterhub.toml` when present), then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from meterhub.command_settings import CommandSettings
from meterhub.console_settings import ConsoleSettings
from meterhub.poller_settings import PollerSettings

DEFAULT_CONFIG_FILE = Path("meterhub.toml")


class SettingsError(Exception):
    """A configuration value is wrong; the message names the key."""


class DatabaseSettings(BaseModel):
    model_config = {"extra": "forbid"}

    url: str | None = Field(
        default=None,
        description="PostgreSQL URL. Unset: an embedded server under data_dir/postgres is used.",
    )
    pool_min: int = Field(default=1, ge=0, description="Connections the pool keeps open.")
    pool_max: int = Field(default=10, ge=1, description="Most connections the pool opens.")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    timescale: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Use TimescaleDB for readings: auto = when the extension is available.",
    )
    partitions_ahead_months: int = Field(
        default=3, ge=1, le=36, description="Monthly reading partitions kept ready ahead of today."
    )

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("postgresql://", "postgres://")) and "=" not in value:
            raise ValueError("must be a postgresql:// URL or a libpq key=value string")
        return value


class MqttSettings(BaseModel):
    model_config = {"extra": "forbid"}

    url: str | None = Field(
        default=None,
        description="Broker URL, mqtt://[user:password@]host:port. Unset: the demo starts an embedded broker.",
    )


class MqttRoute(BaseModel):
    """Which driver decodes what arrives on a topic filter."""

    model_config = {"extra": "forbid"}

    filter: str = Field(description="MQTT topic filter, e.g. meters/+/up")
    driver: str = Field(description="driver registry key, e.g. native_json, cjt188, json_mapping")
    settings: dict[str, Any] = Field(default_factory=dict, description="the driver's own settings table")
    settings_file: Path | None = Field(default=None, description="or a TOML file holding them")
    response_topic: str | None = Field(
        default=None,
        description="where the driver's replies to an uplink go (e.g. CJ/T 188 acks); {1} is the first + of the filter",
    )

    @field_validator("filter")
    @classmethod
    def _valid_filter(cls, value: str) -> str:
        parts = value.split("/")
        if not value or any(("#" in p and p != "#") or ("+" in p and p != "+") for p in parts) or ("#" in parts[:-1]):
            raise ValueError(f"invalid MQTT topic filter {value!r}")
        return value


def _default_routes() -> list[MqttRoute]:
    return [
        MqttRoute(filter="meters/+/up", driver="native_json"),
        MqttRoute(filter="meters/+/reply", driver="native_json"),
    ]


class CollectorSettings(BaseModel):
    model_config = {"extra": "forbid"}

    client_id: str = Field(default="meterhub-collector", description="Fixed MQTT client id: the persistent session")
    protocol: Literal["5", "3.1.1"] = "5"
    share_group: str | None = Field(
        default=None, description="Subscribe as $share/<group>/… so several collectors split the load (MQTT 5)"
    )
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0, description="How long the broker keeps our session")
    receive_maximum: int = Field(default=4000, ge=1, le=65535, description="Unacknowledged messages in flight")
    batch_max_readings: int = Field(default=20000, ge=1, description="Flush when a batch holds this many rows")
    batch_max_age_ms: int = Field(default=50, ge=1, description="…or when its oldest message is this old")
    unknown_meter: Literal["quarantine", "auto_provision"] = "quarantine"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9640, ge=0, le=65535, description="Prometheus /metrics; 0 = off")
    routes: list[MqttRoute] = Field(default_factory=_default_routes)


class LogSettings(BaseModel):
    model_config = {"extra": "forbid"}

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class SmsHttpSettings(BaseModel):
    """An HTTP SMS provider (`[sms.http]`): where and how a message is posted, and how its answer reads."""

    model_config = {"extra": "forbid"}

    url: str = Field(default="", description="The provider's send URL (http:// or https://).")
    method: Literal["POST", "GET"] = "POST"
    body: Literal["json", "form"] = Field(default="json", description="POST body as JSON or as a form.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers, e.g. an API key header.")
    auth_header: str = Field(default="Authorization", description="Header that carries auth_value.")
    auth_value: str = Field(default="", description="e.g. 'Bearer <key>'; empty: no auth header.")
    signature_secret: str = Field(default="", description="HMAC-SHA256 key; empty: requests are not signed.")
    signature_header: str = Field(default="X-Signature", description="Header with hex HMAC of timestamp + body.")
    timestamp_header: str = Field(default="X-Timestamp", description="Header with the Unix time that was signed.")
    fields: dict[str, str] = Field(
        default_factory=lambda: {"phone": "mobile", "text": "content", "reference": "ref"},
        description="Our names (phone, text, reference) → the provider's field names.",
    )
    extra_fields: dict[str, str] = Field(default_factory=dict, description="Constant fields sent with every message.")
    success_field: str = Field(default="code", description="Dotted path of the answer's status field.")
    success_values: list[str] = Field(default_factory=lambda: ["0"], description="Values that mean accepted.")
    message_id_field: str = Field(default="msgid", description="Dotted path of the provider's message id.")
    error_field: str = Field(default="message", description="Dotted path of the answer's error text.")
    timeout_s: float = Field(default=10.0, gt=0)
    status_url: str = Field(default="", description="Polling of delivery reports: GET status_url?id=<msgid>.")
    report_id_field: str = Field(default="msgid", description="Delivery report: field with the provider's id.")
    report_status_field: str = Field(default="status", description="Delivery report: field with the status.")
    delivered_values: list[str] = Field(default_factory=lambda: ["DELIVRD", "delivered"])
    failed_values: list[str] = Field(default_factory=lambda: ["UNDELIV", "REJECTD", "EXPIRED", "failed"])

    @field_validator("url", "status_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class SmsSettings(BaseModel):
    """SMS sending (`[sms]`): the gateway and the sender loop."""

    model_config = {"extra": "forbid"}

    gateway: Literal["outbox", "http"] = Field(
        default="outbox", description="outbox: messages are written to the sms_outbox table; http: [sms.http]."
    )
    sender: bool = Field(default=True, description="Run the sender loop in `meterhub serve`.")
    poll_s: float = Field(default=5.0, gt=0, description="How often the sender looks for queued messages.")
    batch: int = Field(default=50, ge=1, le=1000, description="Messages claimed per round.")
    max_attempts: int = Field(default=3, ge=1, le=20, description="Sends per message before it fails.")
    retry_after_s: float = Field(default=60.0, ge=0, description="Wait after a failed attempt, times the attempt.")
    notify_s: float = Field(default=600.0, gt=0, description="How often the automatic notice scan runs in serve.")
    http: SmsHttpSettings = SmsHttpSettings()


class Settings(BaseSettings):
    """Everything meterhub reads from configuration."""

    model_config = SettingsConfigDict(
        env_prefix="METERHUB_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        case_sensitive=False,
    )

    data_dir: Path = Field(default=Path("var"), description="Where embedded servers keep their data.")
    timezone: str = Field(
        default="Asia/Shanghai",
        description="The utility's local time zone: days and billing periods are counted in it.",
    )
    database: DatabaseSettings = DatabaseSettings()
    mqtt: MqttSettings = MqttSettings()
    collector: CollectorSettings = CollectorSettings()
    poller: PollerSettings = PollerSettings()
    commands: CommandSettings = CommandSettings()
    console: ConsoleSettings = ConsoleSettings()
    sms: SmsSettings = SmsSettings()
    log: LogSettings = LogSettings()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _config_file_in_use.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


# Which TOML file Settings reads; set by load_settings (pydantic-settings takes the path at class level).
_config_file_in_use: dict[str, Path | None] = {"path": None}


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings; raise SettingsError naming the key of the first wrong value."""
    path = Path(config) if config is not None else None
    if path is None:
        env_path = os.environ.get("METERHUB_CONFIG")
        path = Path(env_path) if env_path else (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None)
    if path is not None and not path.is_file():
        raise SettingsError(f"config file {path} does not exist")
    _config_file_in_use["path"] = path
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, path)) from None
    except ValueError as exc:  # TOML syntax errors and the like
        raise SettingsError(f"{path}: {exc}") from None
    finally:
        _config_file_in_use["path"] = None


def _describe(exc: ValidationError, path: Path | None) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        env = "METERHUB_" + "_".join(str(part) for part in error["loc"]).upper()
        given = error.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"{key}: {error['msg']}{shown} [TOML key {key}, environment {env}]")
    origin = f" in {path} or the environment" if path else " in the environment"
    return f"invalid configuration{origin}:\n  " + "\n  ".join(lines)
