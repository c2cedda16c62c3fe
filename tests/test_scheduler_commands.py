"""WAKTU and LIBUR through the engine, and the check-in they move, with a fixed clock.

The clock reads Thursday 5 March 2026, 01:30 UTC; Rina, the parent, lives in Hong Kong
(UTC+8), so her Sunday 19:00 is 11:00 UTC.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlmodel import select

from bot.config import Config
from bot.scheduler import run_due
from storage.db import session_scope
from storage.models import ReminderSchedule
from tests.conftest import Demo
from tests.test_scheduler import kinds  # noqa: F401  (the fixture, used below)

# Only the parents' check-in is registered here: other features' kinds would change
# which reminder is next.
pytestmark = pytest.mark.usefixtures("kinds")


def _next_due(demo: Demo, name: str, kind: str = "parent_checkin") -> datetime:
    with session_scope(demo.db) as session:
        row = session.exec(select(ReminderSchedule).where(
            ReminderSchedule.member_id == demo.ids[name], ReminderSchedule.kind == kind)).one()
        return row.next_due_at


def _family(make_family: Callable[..., Demo]) -> Demo:
    demo = make_family()
    for name in ("Rina", "Warsini"):
        demo.say(name, "MENU")  # the first-contact notice out of the way
    return demo


def test_waktu_changes_the_time_in_her_own_zone(make_family: Callable[..., Demo]) -> None:
    demo = _family(make_family)
    (reply,) = demo.say("Rina", "WAKTU 20:00")
    assert reply.startswith("Beres") and "20:00" in reply
    assert "Minggu, 8 Maret 2026 20:00" in reply  # shown in Hong Kong time
    assert demo.member("Rina").reminder_time == "20:00"
    assert _next_due(demo, "Rina") == datetime(2026, 3, 8, 12, tzinfo=UTC)
    (reply,) = demo.say("Rina", "waktu 7 malam")
    assert demo.member("Rina").reminder_time == "19:00" and "19:00" in reply
    (reply,) = demo.say("Rina", "WAKTU")
    assert "Minggu, 8 Maret 2026 19:00" in reply and "WAKTU 20:00" in reply


def test_waktu_refuses_the_night_and_nonsense(make_family: Callable[..., Demo]) -> None:
    demo = _family(make_family)
    (reply,) = demo.say("Rina", "WAKTU 23:30")
    assert "21:00" in reply and "07:00" in reply
    (reply,) = demo.say("Rina", "WAKTU besok saja")
    assert "WAKTU 20:00" in reply
    assert demo.member("Rina").reminder_time is None


def test_libur_moves_the_checkin_to_her_day_off(make_family: Callable[..., Demo],
                                                config: Config) -> None:
    demo = _family(make_family)
    (reply,) = demo.say("Rina", "LIBUR")
    assert "Minggu" in reply and "LIBUR Jumat" in reply
    (reply,) = demo.say("Rina", "libur jumat")
    assert reply.startswith("Beres") and "Jumat" in reply
    assert demo.member("Rina").rest_day == 4
    friday = datetime(2026, 3, 6, 11, tzinfo=UTC)  # Friday 19:00 in Hong Kong
    assert _next_due(demo, "Rina") == friday
    assert run_due(demo.db, config, friday)["parent_checkin"] == 1
    (checkin,) = [r for r in demo.inbox("Rina") if r.kind == "reminder"]
    assert checkin.text.startswith("Halo Rina, waktunya kabar") and checkin.created_at == friday
    (reply,) = demo.say("Rina", "LIBUR besok")
    assert "LIBUR Jumat" in reply and demo.member("Rina").rest_day == 4


def test_libur_is_for_parents_waktu_for_carers_too(make_family: Callable[..., Demo]) -> None:
    demo = _family(make_family)
    demo.say("Warsini", "LIBUR Jumat")
    assert demo.member("Warsini").rest_day is None
    (reply,) = demo.say("Warsini", "WAKTU 17:00")
    assert "17:00" in reply and demo.member("Warsini").reminder_time == "17:00"
    rina_menu = "\n".join(demo.say("Rina", "MENU"))
    carer_menu = "\n".join(demo.say("Warsini", "MENU"))
    assert "WAKTU 20:00" in rina_menu and "LIBUR Jumat" in rina_menu
    assert "WAKTU 20:00" in carer_menu and "LIBUR" not in carer_menu


def test_in_english_and_javanese(make_family: Callable[..., Demo]) -> None:
    demo = _family(make_family)
    demo.say("Rina", "BAHASA en")
    (reply,) = demo.say("Rina", "TIME 8pm")
    assert reply.startswith("Done: your reminders will come at 20:00")
    assert "Sunday, 8 March 2026 20:00" in reply
    demo.say("Rina", "BAHASA jv")
    (reply,) = demo.say("Rina", "PREI Setu")
    assert reply.startswith("Wis:") and demo.member("Rina").rest_day == 5
