"""Realistic JSON events of an exact size, from a seeded generator, and the batches cut from them.

Two shapes, both valid JSON, varied field by field (ids, event types, timestamps, amounts, words
of free text), never repeated bytes:

* 256 bytes: a flat payment/order/account event with a short free-text ``note``;
* 4 KiB (any size >= ``MIN_RICH_SIZE``): the same header fields plus a customer, a list of order
  lines and tags, with a longer ``note`` making up the exact size.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Sequence

SMALL_EVENT = 256
LARGE_EVENT = 4096
EVENT_SIZES = (SMALL_EVENT, LARGE_EVENT)
MIN_RICH_SIZE = 1024
"""Events at least this big get a customer, order lines and tags, not just a note."""


class EventSizeError(Exception):
    """Raised when the generator cannot make an event of the size asked for."""


_WORD_TEXT = (
    "account balance transfer pending settled refund invoice customer merchant approved declined review "
    "payment card ledger audit daily limit risk score manual override branch region north south east west "
    "priority standard express delivery warehouse shipment order item quantity discount coupon loyalty "
    "points tier gold silver bronze session login logout device mobile desktop browser address verified "
    "email phone update profile consent policy retention archive export report quarterly annual summary"
)
_WORDS = _WORD_TEXT.split()
_EVENT_TYPES = (
    "payment.authorized",
    "payment.captured",
    "payment.refunded",
    "order.created",
    "order.shipped",
    "order.cancelled",
    "account.opened",
    "account.updated",
    "user.login",
    "user.logout",
)
_CURRENCIES = ("EUR", "USD", "GBP", "CHF", "JPY", "SEK")
_COUNTRIES = ("DE", "FR", "US", "GB", "CH", "JP", "SE", "NL", "ES", "IT")
_CITIES = ("Berlin", "Lyon", "Austin", "Leeds", "Basel", "Osaka", "Malmo", "Utrecht", "Sevilla", "Torino")
_STREETS = ("Main St", "Station Rd", "Market Sq", "Harbour Way", "Mill Lane", "Park Ave", "Church St")
_TAGS = ("gift", "repeat", "b2b", "promo", "fragile", "priority", "first-order", "subscription", "export")
_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
_MIN_NOTE = 64
"""Free text a rich event keeps at least, so order lines never fill it exactly."""


def _dumps(fields: dict[str, object]) -> str:
    return json.dumps(fields, separators=(",", ":"))


def _words(rng: random.Random, length: int) -> str:
    """Free text of exactly ``length`` characters: random words, the last one cut."""
    words: list[str] = []
    total = -1  # the length of " ".join(words)
    while total < length:
        word = rng.choice(_WORDS)
        words.append(word)
        total += len(word) + 1
    return " ".join(words)[:length]


def _header(rng: random.Random, seq: int) -> dict[str, object]:
    """The fields every event has: id, type, time, account, amount, currency, country, attempt."""
    when = _EPOCH + dt.timedelta(seconds=(seq + rng.random()) * 0.25)
    return {
        "id": f"evt_{seq:010d}_{rng.getrandbits(32):08x}",
        "type": rng.choice(_EVENT_TYPES),
        "ts": when.isoformat(timespec="milliseconds"),
        "account": f"acct-{rng.randrange(1_000_000):06d}",
        "amount": round(rng.uniform(0.5, 25_000.0), 2),
        "currency": rng.choice(_CURRENCIES),
        "country": rng.choice(_COUNTRIES),
        "attempt": rng.randint(1, 3),
    }


def _customer(rng: random.Random) -> dict[str, object]:
    number = rng.randrange(10_000_000)
    return {
        "id": f"cus_{number:07d}",
        "email": f"{rng.choice(_WORDS)}.{rng.choice(_WORDS)}{number % 997}@example.com",
        "tier": rng.choice(("gold", "silver", "bronze", "none")),
        "address": {
            "street": f"{rng.randint(1, 240)} {rng.choice(_STREETS)}",
            "city": rng.choice(_CITIES),
            "postcode": f"{rng.randrange(100_000):05d}",
            "country": rng.choice(_COUNTRIES),
        },
    }


def _order_line(rng: random.Random, line: int) -> dict[str, object]:
    return {
        "line": line,
        "sku": f"SKU-{rng.randrange(1_000_000):06d}",
        "name": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 4))),
        "qty": rng.randint(1, 12),
        "unit_price": round(rng.uniform(0.5, 900.0), 2),
        "discount": round(rng.uniform(0.0, 0.3), 2),
        "warehouse": f"{rng.choice(_COUNTRIES)}-{rng.randint(1, 9)}",
    }


def make_event(rng: random.Random, seq: int, size: int = SMALL_EVENT) -> bytes:
    """One JSON event of exactly ``size`` bytes (see the module docstring for its shape)."""
    fields = _header(rng, seq)
    if size >= MIN_RICH_SIZE:
        fields["customer"] = _customer(rng)
        fields["tags"] = rng.sample(_TAGS, rng.randint(1, 4))
        lines: list[dict[str, object]] = []
        fields["lines"] = lines
        fields["note"] = ""
        length = len(_dumps(fields))  # kept up to date as lines are added, without re-encoding
        while True:
            line = _order_line(rng, len(lines) + 1)
            length += len(_dumps(line)) + (1 if lines else 0)  # the line and its separating comma
            if length > size - _MIN_NOTE:
                break
            lines.append(line)
    fields["note"] = ""
    room = size - len(_dumps(fields))
    if room < 0:
        raise EventSizeError(f"an event needs more than {size} bytes")
    fields["note"] = _words(rng, room)
    event = _dumps(fields).encode("ascii")
    if len(event) != size:
        raise EventSizeError(f"generated a {len(event)}-byte event, expected {size}")
    return event


def make_event_pool(count: int, seed: int, size: int = SMALL_EVENT) -> list[bytes]:
    """``count`` distinct events from a seeded generator; workloads cycle through the pool."""
    rng = random.Random(seed)
    return [make_event(rng, seq, size) for seq in range(count)]


def make_batches(pool: Sequence[bytes], n_events: int, batch_size: int) -> list[list[bytes]]:
    """``n_events`` events from the pool, cut into batches (built before any timing starts)."""
    return [
        [pool[(start + i) % len(pool)] for i in range(min(batch_size, n_events - start))]
        for start in range(0, n_events, batch_size)
    ]
