"""Settings of the valve and credit command service and its dispatcher (`[commands]`)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field


class CommandSettings(BaseModel):
    model_config = {"extra": "forbid"}

    enabled: bool = Field(default=True, description="Run the command dispatcher in `meterhub collect`.")
    ack_timeout_s: float = Field(default=30.0, gt=0, description="Wait this long for a meter's reply.")
    sleepy_ack_timeout_s: float = Field(
        default=120.0, gt=0, description="…for a sleepy (NB-IoT) meter, counted from its receive window."
    )
    read_timeout_s: float = Field(
        default=300.0, gt=0, description="After a timeout: wait this long for the state read back before giving up."
    )
    max_attempts: int = Field(
        default=2, ge=1, le=10, description="Sends per command; a re-send only after the meter said it did not act."
    )
    sweep_s: float = Field(default=5.0, gt=0, description="Periodic sweep besides LISTEN/NOTIFY.")
    batch: int = Field(default=500, ge=1, description="Commands claimed per round.")
    bulk_approval_size: int = Field(
        default=20, ge=1, description="Bulk requests of this many meters or more need approval."
    )
    low_credit_cny: Decimal = Field(default=Decimal("10.00"), description="Account balance that raises low_credit.")
    warning_lead_h: float = Field(
        default=24.0, ge=0, description="Prepaid: hours between the low-credit warning and an automatic close."
    )
    prepaid_sweep_s: float = Field(default=300.0, gt=0, description="How often prepaid accounts are checked.")
