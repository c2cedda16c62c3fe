"""The simulator channel: delivery is recording, the web page and terminal read the outbox."""

from __future__ import annotations

from bot.channels.base import MAX_LENGTH, SendResult
from storage.models import Outbox


class SimulatorChannel:
    """Delivers instantly: the simulator shows the outbox rows marked sent."""

    name = "simulator"
    rate_per_s = 1000.0
    rate_per_address_per_s: float | None = None
    max_length = MAX_LENGTH["simulator"]

    def send(self, row: Outbox) -> SendResult:
        """Accept the message as delivered."""
        return SendResult(ok=True, external_id=f"sim-{row.id}")


def address_for(member_id: int) -> str:
    """Return the simulator address of a member."""
    return f"sim-{member_id}"
