"""Channel adapters: one module per platform, the only places that import its library."""

from __future__ import annotations

from bot.channels.base import Channel, SendResult
from bot.config import Config

__all__ = ["Channel", "SendResult", "build_channels"]


def build_channels(config: Config) -> dict[str, Channel]:
    """Return the adapters the configuration turns on."""
    channels: dict[str, Channel] = {}
    if config.server.simulator:
        from bot.channels.simulator import SimulatorChannel

        channels["simulator"] = SimulatorChannel()
    if config.telegram_enabled:
        from bot.channels.telegram import TelegramChannel

        channels["telegram"] = TelegramChannel(config)
    if config.whatsapp_enabled:
        from bot.channels.whatsapp import WhatsAppChannel

        channels["whatsapp"] = WhatsAppChannel(config)
    return channels
