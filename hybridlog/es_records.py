"""The layout of the payloads ``hybridlog.eventsourcing`` writes (``docs/eventsourcing.md`` section 2),
for the readers that are not eventsourcing: its codec builds on these, and ``hybridlog sql`` gets
SQL functions that take an event payload apart (``es_topic(payload)``, ...), so an application's
events can be queried by topic, originator and state without eventsourcing installed.

Every payload starts with ``HLES``, a codec version (1) and a type letter; integers are
little-endian:

    header    b"HLES" 01 b"H"  name (UTF-8)
    event     b"HLES" 01 b"E"  notification_id u64, originator_version i64, id_type u8 (0 UUID, 1 str),
                               id_len u16, topic_len u16, originator id, topic (UTF-8), state
    tracking  b"HLES" 01 b"T"  notification_id u64, application name (UTF-8)
"""

from __future__ import annotations

import struct
from typing import NamedTuple
from uuid import UUID

import apsw

PREFIX = b"HLES\x01"
HEADER, EVENT, TRACKING = b"H", b"E", b"T"
EVENT_HEADER = struct.Struct("<6sQqBHH")  # prefix + type, notification id, version, id type, id length, topic length
TRACKING_HEADER = struct.Struct("<6sQ")  # prefix + type, notification id
UUID_ID, STR_ID = 0, 1
UUID_SIZE = 16


class EventFields(NamedTuple):
    """An event payload's fields, the originator id as it is stored (16 bytes for a UUID)."""

    notification_id: int
    originator_version: int
    id_type: int
    id_bytes: bytes
    topic: bytes
    state: bytes


def event_fields(payload: bytes) -> EventFields | None:
    """The fields of an event payload; None for any other payload, or one that is malformed."""
    if not payload.startswith(PREFIX + EVENT) or len(payload) < EVENT_HEADER.size:
        return None
    _, nid, version, id_type, id_len, topic_len = EVENT_HEADER.unpack_from(payload)
    start = EVENT_HEADER.size
    id_bytes = payload[start : start + id_len]
    topic = payload[start + id_len : start + id_len + topic_len]
    if len(id_bytes) != id_len or len(topic) != topic_len or (id_type, id_len == UUID_SIZE) not in _ID_TYPES:
        return None
    return EventFields(nid, version, id_type, id_bytes, topic, payload[start + id_len + topic_len :])


_ID_TYPES = {(UUID_ID, True), (STR_ID, True), (STR_ID, False)}


def originator_text(fields: EventFields) -> str:
    """The originator id as text: a UUID's canonical form, or the string id."""
    if fields.id_type == UUID_ID:
        return str(UUID(bytes=fields.id_bytes))
    return fields.id_bytes.decode("utf-8", "replace")


def register_sql_functions(conn: apsw.Connection) -> None:
    """``es_notification_id``, ``es_originator_id``, ``es_version``, ``es_topic`` and ``es_state``:
    each takes an ``events.payload`` and gives that field of an eventsourcing event, or NULL for
    a payload that is not one (a checkpoint's NULL, another application's bytes, a tracking record)."""

    def field(pick: str) -> object:
        def get(payload: object) -> object:
            fields = event_fields(payload) if isinstance(payload, bytes) else None
            if fields is None:
                return None
            if pick == "originator_id":
                return originator_text(fields)
            if pick == "topic":
                return fields.topic.decode("utf-8", "replace")
            return getattr(fields, pick)

        return get

    for name, pick in (
        ("es_notification_id", "notification_id"),
        ("es_originator_id", "originator_id"),
        ("es_version", "originator_version"),
        ("es_topic", "topic"),
        ("es_state", "state"),
    ):
        conn.create_scalar_function(name, field(pick), 1, deterministic=True)  # type: ignore[arg-type]
