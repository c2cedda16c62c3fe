"""What every channel adapter offers the sender: send one rendered message."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from storage.models import Outbox

# The longest text one platform message may carry, in characters. Telegram allows 4096
# and Twilio 1600, both counted in UTF-16 units: the margin keeps emoji-rich texts under.
MAX_LENGTH = {"telegram": 4000, "whatsapp": 1500, "simulator": 4096}
# Network channels pace a little under each platform's limit, so that network jitter
# never puts one send too many into the platform's one-second window.
PACE = 0.97


@dataclass(frozen=True)
class SendResult:
    """The outcome of one delivery attempt."""

    ok: bool
    external_id: str | None = None
    retry_after: float | None = None  # the platform asked us to wait this long (429)
    # What the wait applies to: "channel" (everything we send there) or "address" (this
    # chat only, e.g. Telegram's one message per second per chat).
    retry_scope: str = "channel"
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


@runtime_checkable
class ConcurrentChannel(Protocol):
    """A channel that can have several messages in flight at once (network adapters)."""

    max_in_flight: int

    def submit(self, row: Outbox) -> Future[SendResult]:
        """Start delivering one message; the future never raises for a platform's answer."""
        ...


@runtime_checkable
class AsyncChannel(Protocol):
    """A channel whose sends are coroutines on its own event loop (several in flight).

    The sender hands it a whole batch at once, paced on that loop: no hand-over between
    threads per message.
    """

    max_in_flight: int

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """Return the event loop the sends run on (one per process)."""
        ...

    async def send_async(self, row: Outbox) -> SendResult:
        """Deliver one message; never raise for a platform's answer."""
        ...
