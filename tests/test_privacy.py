"""Logs must never hold a whole phone number, a chat id or what someone wrote."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.privacy import REDACTED, mask_phone, mask_text, normalise_e164, redact

# --- mask_phone ---------------------------------------------------------------------------

MASKED: list[tuple[str, str]] = [
    ("whatsapp:+6281234567890", "whatsapp:+62*********90"),
    ("+6281234567890", "+62*********90"),
    ("WhatsApp:+85291234567", "WhatsApp:+85*******67"),
    ("+852 9123 4567", "+85*******67"),
    ("0812-3456-7890", "08********90"),
    ("123456789", "12*****89"),  # a Telegram chat id
    ("-1001234567890", "-10*********90"),  # a Telegram group id
    ("telegram:123456789", "telegram:12*****89"),
    ("12345", "***45"),
    ("1234", "****"),
    ("7", "*"),
    ("budi@example.com", "****@*******.***"),
    ("sim-1", "***-*"),
    ("call 0812345678", "**** **********"),
    ("foo:0812345678", "***:**********"),  # an unknown prefix could be personal too
    ("", ""),
]


@pytest.mark.parametrize(("value", "expected"), MASKED)
def test_mask_phone(value: str, expected: str) -> None:
    assert mask_phone(value) == expected


def ascii_digits(text: str) -> str:
    return re.sub(r"[^0-9]", "", text)


@given(
    st.text(alphabet="0123456789", min_size=5, max_size=20),
    st.sampled_from(["", "whatsapp:", "tel:", "telegram:"]),
    st.sampled_from(["", "+", "-"]),
    st.sampled_from(["", " ", "-"]),
)
def test_mask_phone_never_leaks_the_number(
    digits: str, prefix: str, sign: str, separator: str
) -> None:
    # Split the digits in groups the way people write them: +62 812-3456-7890.
    grouped = separator.join(digits[i : i + 4] for i in range(0, len(digits), 4))
    masked = mask_phone(prefix + sign + grouped)
    kept = ascii_digits(masked)
    assert digits not in masked
    assert len(kept) <= 4 and len(kept) < len(digits)
    assert masked.startswith(prefix + sign)
    assert masked.count("*") == len(digits) - len(kept)


@given(st.text(max_size=40))
def test_mask_phone_masks_anything_with_five_digits(value: str) -> None:
    masked = mask_phone(value)
    digits = [ch for ch in value if ch.isdigit()]
    if len(digits) >= 5:
        assert masked != value
        assert len([ch for ch in masked if ch.isdigit()]) <= 4


# --- normalise_e164 -----------------------------------------------------------------------

E164: list[tuple[str, str | None]] = [
    ("0812-3456-7890", "+6281234567890"),
    ("081234567890", "+6281234567890"),
    ("0812 3456 7890", "+6281234567890"),
    ("62812345678", "+62812345678"),
    ("6281234567890", "+6281234567890"),
    ("+6281234567890", "+6281234567890"),
    ("+62 812-3456-7890", "+6281234567890"),
    ("+62 0812-3456-7890", "+6281234567890"),  # the trunk 0 typed after +62
    ("+62 (0)812 3456 7890", "+6281234567890"),
    ("whatsapp:+6281234567890", "+6281234567890"),
    ("+852 9123 4567", "+85291234567"),
    ("whatsapp:+85291234567", "+85291234567"),
    ("00852 9123 4567", "+85291234567"),
    ("+886 912 345 678", "+886912345678"),
    ("+886 0912 345 678", "+886912345678"),
    ("+60 12-345 6789", "+60123456789"),
    ("+966 50 123 4567", "+966501234567"),
    ("+39 06 1234 5678", "+390612345678"),  # Italy keeps its 0
    ("(021) 555-1234", "+62215551234"),
    ("\uff10\uff18\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19", "+628123456789"),
    ("  +6281234567890  ", "+6281234567890"),
    # rejects
    ("", None),
    ("12345", None),
    ("0812", None),
    ("+1234567", None),  # 7 digits
    ("+1234567890123456", None),  # 16 digits
    ("0812-3456-789O", None),  # a letter O
    ("abc", None),
    ("+", None),
    ("+62+812345678", None),
    ("+0812345678", None),
    ("0812#3456#7890", None),
]


@pytest.mark.parametrize(("value", "expected"), E164)
def test_normalise_e164(value: str, expected: str | None) -> None:
    assert normalise_e164(value) == expected


def test_normalise_e164_with_another_default_country() -> None:
    assert normalise_e164("012-345 6789", default_country="60") == "+60123456789"
    with pytest.raises(ValueError):
        normalise_e164("0812", default_country="+62")


@given(st.text(max_size=30))
def test_normalise_e164_never_raises_and_is_e164(value: str) -> None:
    result = normalise_e164(value)
    assert result is None or re.fullmatch(r"\+[1-9][0-9]{7,14}", result)


@given(st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True))
def test_normalise_e164_keeps_e164(value: str) -> None:
    if value[1:].startswith(("620", "600", "8860", "820", "810", "9660")):
        return  # the trunk-0 rule applies
    assert normalise_e164(value) == value
    assert normalise_e164("whatsapp:" + value) == value


# --- mask_text ----------------------------------------------------------------------------


def test_mask_text_hides_content() -> None:
    text = "Anak saya Budi sakit, butuh Rp150.000"
    masked = mask_text(text)
    assert re.fullmatch(r"<text len=37 sha=[0-9a-f]{8}>", masked)
    assert "Budi" not in masked and "150" not in masked


def test_mask_text_is_stable_in_a_process_and_tells_texts_apart() -> None:
    assert mask_text("YA") == mask_text("YA")
    assert mask_text("YA") != mask_text("TIDAK")
    assert mask_text("") == mask_text("")


def test_mask_text_is_keyed_so_short_words_cannot_be_looked_up() -> None:
    import hashlib

    plain = hashlib.sha256(b"YA").hexdigest()[:8]
    assert plain not in mask_text("YA")
    assert mask_text("YA", key=b"one") != mask_text("YA", key=b"two")
    assert mask_text("YA", key=b"one") == mask_text("YA", key=b"one")


@given(st.text(max_size=200))
def test_mask_text_never_contains_the_text(text: str) -> None:
    masked = mask_text(text)
    assert re.fullmatch(rf"<text len={len(text)} sha=[0-9a-f]{{8}}>", masked)


# --- redact -------------------------------------------------------------------------------

TWILIO_FORM = {
    "SmsMessageSid": "SM0123456789abcdef0123456789abcdef",
    "NumMedia": "1",
    "ProfileName": "Siti Aminah",
    "MessageType": "text",
    "WaId": "6281234567890",
    "Body": "DANA 150rb untuk buku Budi",
    "To": "whatsapp:+14155238886",
    "From": "whatsapp:+6281234567890",
    "MessageSid": "SM0123456789abcdef0123456789abcdef",
    "AccountSid": "AC0123456789abcdef0123456789abcdef",
    "MediaUrl0": "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM0/Media/ME0",
    "MediaContentType0": "image/jpeg",
}


def test_redact_a_twilio_form() -> None:
    redacted = redact(TWILIO_FORM)
    assert redacted["From"] == "whatsapp:+62*********90"
    assert redacted["WaId"] == "62*********90"
    assert redacted["To"] == "whatsapp:+14*******86"
    assert redacted["Body"].startswith("<text len=26 ")
    assert redacted["ProfileName"].startswith("<text len=11 ")
    assert redacted["MediaUrl0"].startswith("<text ")
    for kept in ("MessageSid", "AccountSid", "NumMedia", "MediaContentType0", "MessageType"):
        assert redacted[kept] == TWILIO_FORM[kept]
    assert TWILIO_FORM["Body"] == "DANA 150rb untuk buku Budi"  # a copy, not in place
    for secret in ("6281234567890", "Siti", "Budi", "150rb", "ME0"):
        assert secret not in repr(redacted)


TELEGRAM_UPDATE = {
    "update_id": 10001,
    "message": {
        "message_id": 42,
        "date": 1767225600,
        "from": {
            "id": 987654321,
            "is_bot": False,
            "first_name": "Dewi",
            "last_name": "Lestari",
            "username": "dewi_l",
            "language_code": "id",
        },
        "chat": {"id": 987654321, "type": "private", "first_name": "Dewi"},
        "text": "/start ABC123",
        "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
        "contact": {"phone_number": "+6281234567890", "user_id": 987654321},
    },
}


def test_redact_a_telegram_update() -> None:
    redacted = redact(TELEGRAM_UPDATE)
    message = redacted["message"]
    assert redacted["update_id"] == 10001
    assert message["message_id"] == 42
    assert message["from"]["id"] == "98*****21"
    assert message["chat"]["id"] == "98*****21"
    assert message["chat"]["type"] == "private"
    assert message["from"]["is_bot"] is False
    assert message["from"]["language_code"] == "id"
    assert message["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]
    assert message["contact"]["phone_number"] == "+62*********90"
    for secret in ("987654321", "Dewi", "Lestari", "dewi_l", "ABC123", "6281234567890"):
        assert secret not in repr(redacted)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("phone", "081234567890", "08********90"),
        ("whatsapp", "+6281234567890", "+62*********90"),
        ("chat_id", 123456789, "12*****89"),
        ("telegram_chat_id", "-1001234567890", "-10*********90"),
        ("text", "halo", "<text len=4 "),
        ("token", "123:ABC", REDACTED),
        ("auth_token", "abc", REDACTED),
        ("X-Twilio-Signature", "abc=", REDACTED),
        ("password", "hunter2", REDACTED),
        ("invite_code", "K7Q2", REDACTED),
        ("Authorization", "Bearer abc", REDACTED),
        ("status", "sent", "sent"),
        ("phone", None, None),
    ],
)
def test_redact_keys(key: str, value: object, expected: object) -> None:
    redacted = redact({key: value})[key]
    if isinstance(expected, str) and expected.endswith(" "):
        assert redacted.startswith(expected)
    else:
        assert redacted == expected


def test_redact_survives_deep_nesting() -> None:
    payload: dict[str, object] = {"text": "x"}
    for _ in range(200):
        payload = {"inner": payload}
    assert isinstance(redact(payload), dict)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.sampled_from(["From", "Body", "id", "chat", "x"]), children)
        ),
        max_leaves=15,
    )
)
def test_redact_never_raises(value: object) -> None:
    redact({"payload": value, "from": value, "Body": value})
