"""Channel-neutral messages: what comes in from a platform and what handlers ask to send."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Inbound:
    """A message from a person, already authenticated and parsed by its channel."""

    channel: str  # "telegram", "whatsapp" or "simulator"
    address: str  # chat id, whatsapp:+E164, or simulator id
    text: str
    external_id: str  # platform message id, for de-duplication
    received_at: datetime
    kind: str = "text"  # "text", "start", or a non-text kind (sticker, photo, voice...)
    start_code: str | None = None  # Telegram deep-link payload of /start
    profile_name: str | None = None


@dataclass(frozen=True)
class Text:
    """A translatable message: a catalog msgid and its parameters, rendered per recipient.

    A parameter that is itself a ``Text`` is rendered in the recipient's language too;
    ``Money`` and ``datetime`` parameters are formatted for the recipient's locale.
    """

    msgid: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Money:
    """An amount of rupiah, formatted for whoever reads it."""

    amount: int


@dataclass(frozen=True)
class Raw:
    """Text that is shown as it is: a person's own words, relayed."""

    text: str


Part = Text | Raw


@dataclass
class Outbound:
    """A message to queue for one member (or one raw address before registration)."""

    parts: list[Part]
    member_id: int | None = None
    channel: str | None = None  # set with address when there is no member yet
    address: str | None = None
    kind: str = "reply"  # reply, relay, alert, reminder, broadcast, nudge, notice
    urgent: bool = False  # safety alerts and replies: never held by quiet hours
    idempotency_key: str | None = None
    template: str | None = None  # message kind for a WhatsApp template outside the window
    template_vars: dict[str, str] | None = None
    broadcast_id: int | None = None
    sep: str = "\n\n"  # between parts when rendered as one message


def t(msgid: str, **params: Any) -> Text:
    """Build a translatable message (msgid is extracted by pybabel)."""
    return Text(msgid, params)
