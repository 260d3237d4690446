"""The payloads of ``hybridlog.eventsourcing``: the test vectors in ``docs/eventsourcing.md`` are what
the codec writes and reads, ``es_records`` and the SQL functions take them apart the same way, and a
malformed payload is refused, never misread."""

from __future__ import annotations

import re
from pathlib import Path
from uuid import UUID

import apsw
import pytest
from eventsourcing.persistence import StoredEvent, Tracking

from hybridlog.errors import InvalidEvent
from hybridlog.es_records import event_fields, register_sql_functions
from hybridlog.eventsourcing.codec import (
    decode_event,
    decode_header,
    decode_tracking,
    encode_events,
    encode_header,
    encode_tracking,
    payload_type,
)
from hybridlog.eventsourcing.store import stream_id_for

DOC = Path(__file__).resolve().parent.parent / "docs" / "eventsourcing.md"
BLOCK = re.compile(r"^```hybridlog-es-vector\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def vectors() -> list[dict[str, str]]:
    found = []
    for block in BLOCK.findall(DOC.read_text(encoding="utf-8")):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line.startswith("  "):
                fields[key] += line.strip()
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        found.append(fields)
    return found


def originator(text: str) -> UUID | str:
    return text.removeprefix("str:") if text.startswith("str:") else UUID(text)


def sql(payload: bytes) -> tuple[object, ...]:
    conn = apsw.Connection(":memory:")
    register_sql_functions(conn)
    row = conn.execute(
        "SELECT es_notification_id(?1), es_originator_id(?1), es_version(?1), es_topic(?1), es_state(?1)", (payload,)
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_the_document_has_every_kind_of_vector() -> None:
    assert sorted(v["type"] for v in vectors()) == ["event", "event", "header", "tracking"]


@pytest.mark.parametrize("vector", vectors(), ids=lambda v: v["name"])
def test_each_vector_is_what_the_codec_writes_and_reads(vector: dict[str, str]) -> None:
    payload = bytes.fromhex(vector["hex"])
    if vector["type"] == "event":
        oid = originator(vector["originator_id"])
        event = StoredEvent(oid, int(vector["originator_version"]), vector["topic"], vector["state"].encode())
        nid = int(vector["notification_id"])
        assert encode_events([event], nid).payloads == [payload]
        decoded = decode_event(payload)
        assert decoded.stored_event() == event
        assert decoded.notification_id == nid
        fields = event_fields(payload)
        assert fields is not None
        assert (fields.notification_id, fields.originator_version, fields.state) == (
            nid,
            event.originator_version,
            event.state,
        )
        assert sql(payload) == (nid, str(oid), event.originator_version, event.topic, event.state)
    elif vector["type"] == "tracking":
        tracking = Tracking(vector["application_name"], int(vector["notification_id"]))
        assert encode_tracking(tracking) == payload
        assert decode_tracking(payload) == tracking
        assert event_fields(payload) is None
        assert sql(payload) == (None,) * 5
    else:
        assert encode_header(vector["recorder"]) == payload
        assert decode_header(payload) == vector["recorder"]
        assert stream_id_for(vector["recorder"]) == int(vector["stream_id"])
        assert sql(payload) == (None,) * 5


def test_a_malformed_event_payload_is_refused_never_misread() -> None:
    good = encode_events([StoredEvent(UUID(int=5), 1, "topic", b"state")], 1).payloads[0]
    malformed = [
        good[:20],  # shorter than its header
        good[:30],  # the id cut short
        good[:22] + b"\x07" + good[23:],  # an unknown id type
        good[:23] + b"\x05\x00" + good[25:],  # a UUID of 5 bytes
        good[:25] + b"\xff\x00" + good[27:],  # a topic longer than the payload
    ]
    for payload in malformed:
        assert event_fields(payload) is None
        assert sql(payload) == (None,) * 5
        with pytest.raises(InvalidEvent):
            decode_event(payload)
    for foreign in (b"", b"HLES", b"HLES\x02E" + good[6:], b'{"json": true}', b"HLES\x01X"):
        assert payload_type(foreign) is None
        assert event_fields(foreign) is None
    assert sql(None) == (None,) * 5  # type: ignore[arg-type]  # a checkpoint's payload column is NULL
