"""What every channel adapter offers the sender: send one rendered message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from storage.models import Outbox


@dataclass(frozen=True)
class SendResult:
    """The outcome of one delivery attempt."""

    ok: bool
    external_id: str | None = None
    retry_after: float | None = None  # the platform asked us to wait this long (429)
    permanent: bool = False  # retrying cannot help (blocked, invalid number)
    error: str | None = None
    unreachable: bool = False  # mark the identity unreachable (blocked, opted out)
    opted_out: bool = False  # the person opted out at the platform (WhatsApp STOP)
    window_closed: bool = False  # WhatsApp: outside the 24-hour window


class Channel(Protocol):
    """A platform the sender can deliver to."""

    name: str
    rate_per_s: float
    rate_per_address_per_s: float | None
    max_length: int

    def send(self, row: Outbox) -> SendResult:
        """Deliver one message; never raise for a platform's answer."""
        ...
