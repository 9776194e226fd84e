"""Settings of the web console and the REST API (`[console]`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ConsoleSettings(BaseModel):
    model_config = {"extra": "forbid"}

    host: str = Field(default="127.0.0.1", description="Address `meterhub serve` listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port of the console; 0 = any free port.")
    secure_cookies: bool = Field(
        default=False, description="Send cookies only over HTTPS; turn on behind a TLS-terminating proxy."
    )
    session_idle_min: int = Field(default=30, ge=1, description="A session unused this long ends.")
    session_max_h: int = Field(default=12, ge=1, description="A session ends this long after login, used or not.")
    lockout_failures: int = Field(
        default=5, ge=1, description="Failed logins for one user name that lock it for `lockout_min`."
    )
    lockout_min: int = Field(default=15, ge=1, description="How long a lockout lasts (and the window counted).")
    ip_failures: int = Field(default=30, ge=1, description="Failed logins from one address that block it for a while.")
    failure_delay_s: float = Field(
        default=0.5, ge=0, description="Pause before answering a failed login (slows guessing down)."
    )
    page_size: int = Field(default=50, ge=5, le=1000, description="Rows per page in lists.")
