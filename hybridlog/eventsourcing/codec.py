"""eventsourcing's objects to and from the payloads ``hybridlog.eventsourcing`` writes: one record per
stored event, per tracking object, and one header naming the recorder's stream. The layout is in
``hybridlog/es_records.py`` and ``docs/eventsourcing.md`` section 2. The notification id of an
event is in its payload, so it is a fact of the segments: it is hashed and chained with the
record, and no rebuild of any index can renumber it.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple
from uuid import UUID, SafeUUID

from eventsourcing.persistence import Notification, StoredEvent, Tracking

from hybridlog.errors import InvalidArgument, InvalidEvent
from hybridlog.es_records import (
    EVENT,
    EVENT_HEADER,
    HEADER,
    PREFIX,
    STR_ID,
    TRACKING,
    TRACKING_HEADER,
    UUID_ID,
    UUID_SIZE,
    event_fields,
)
from hybridlog.types import Record, RecordKind

_MAX_U16 = 0xFFFF
_MAX_U64 = 2**64 - 1
_MIN_I64, _MAX_I64 = -(2**63), 2**63 - 1


def originator_key(originator_id: UUID | str) -> bytes:
    """The index key of an originator id: its type (0 UUID, 1 str) and its bytes, so a UUID and the
    string of its hex are different aggregates, as they are to eventsourcing."""
    return _originator(originator_id)[2]


def encode_header(name: str) -> bytes:
    """The first record of a recorder's stream: the recorder's name."""
    return PREFIX + HEADER + utf8(name, "a recorder name")


class EncodedInsert(NamedTuple):
    """An insert's events as record payloads, and its runs: (originator key, first version, last
    version, index of the run's first event) for each stretch of one originator's consecutive
    versions."""

    payloads: list[bytes]
    runs: list[tuple[bytes, int, int, int]]
    duplicate: bool
    """Whether an originator version is in the insert twice."""


def encode_events(events: Sequence[StoredEvent], first_id: int) -> EncodedInsert:
    """Every event of an insert as a record payload, numbered from ``first_id`` (InvalidArgument for a
    field eventsourcing would not make), in one pass that converts each originator id and topic
    once and folds the versions into runs as it goes."""
    payloads: list[bytes] = []
    runs: list[tuple[bytes, int, int, int]] = []
    originators: dict[object, tuple[int, bytes, bytes]] = {}
    topics: dict[object, bytes] = {}
    pack, head = EVENT_HEADER.pack, PREFIX + EVENT
    key: bytes | None = None
    first = last = start = 0
    for i, event in enumerate(events):
        oid, version, state = event.originator_id, event.originator_version, event.state
        known = originators.get(oid) if type(oid) in (UUID, str) else None
        if known is None:
            known = originators[oid] = _originator(oid)
        topic = topics.get(event.topic) if type(event.topic) is str else None
        if topic is None:
            topic = topics[event.topic] = _topic(event.topic)
        if type(version) is not int or not _MIN_I64 <= version <= _MAX_I64:
            raise InvalidArgument(f"originator_version must be a 64-bit int, not {version!r}")
        if type(state) is not bytes:
            if not isinstance(state, bytearray | memoryview):
                raise InvalidArgument(f"state must be bytes, not {type(state).__name__}")
            state = bytes(state)
        id_type, id_bytes, this_key = known
        payloads.append(
            pack(head, first_id + i, version, id_type, len(id_bytes), len(topic)) + id_bytes + topic + state
        )
        if this_key is key and version == last + 1:
            last = version
            continue
        if key is not None:
            runs.append((key, first, last, start))
        key, first, last, start = this_key, version, version, i
    if key is not None:
        runs.append((key, first, last, start))
    return EncodedInsert(payloads, runs, _has_duplicate(runs))


def _originator(oid: object) -> tuple[int, bytes, bytes]:
    """(id type, id bytes, index key) of an originator id."""
    if isinstance(oid, UUID):
        id_type, id_bytes = UUID_ID, oid.bytes
    elif isinstance(oid, str):
        id_type, id_bytes = STR_ID, utf8(oid, "an originator id")
    else:
        raise InvalidArgument(f"originator_id must be a UUID or a str, not {type(oid).__name__}")
    if len(id_bytes) > _MAX_U16:
        raise InvalidArgument("an originator id is longer than 65535 bytes")
    return id_type, id_bytes, _key(id_type, id_bytes)


def _key(id_type: int, id_bytes: bytes) -> bytes:
    """An originator's index key: its id type byte, then its id's bytes."""
    return bytes((id_type,)) + id_bytes


def _topic(topic: object) -> bytes:
    if not isinstance(topic, str):
        raise InvalidArgument(f"topic must be a str, not {type(topic).__name__}")
    encoded = utf8(topic, "a topic")
    if len(encoded) > _MAX_U16:
        raise InvalidArgument("a topic is longer than 65535 bytes")
    return encoded


def _has_duplicate(runs: list[tuple[bytes, int, int, int]]) -> bool:
    """Whether two runs of one originator share a version (a run never repeats one)."""
    if len(runs) < 2 or len({key for key, _, _, _ in runs}) == len(runs):
        return False  # the common case: one run per originator
    by_key: dict[bytes, list[tuple[int, int]]] = {}
    for key, first, last, _ in runs:
        by_key.setdefault(key, []).append((first, last))
    for spans in by_key.values():
        spans.sort()
        if any(spans[n][0] <= spans[n - 1][1] for n in range(1, len(spans))):
            return True
    return False


def encode_tracking(tracking: Tracking) -> bytes:
    """A tracking object as a record payload."""
    name, nid = tracking.application_name, tracking.notification_id
    if not isinstance(name, str) or isinstance(nid, bool) or not isinstance(nid, int) or not 0 <= nid <= _MAX_U64:
        raise InvalidArgument(f"a tracking object needs a str name and an int id >= 0, not {tracking!r}")
    return TRACKING_HEADER.pack(PREFIX + TRACKING, nid) + utf8(name, "an application name")


class DecodedEvent(NamedTuple):
    """An event record read back: its notification id, the stored event's fields, and the
    originator's index key (``originator_key``)."""

    notification_id: int
    originator_id: UUID | str
    originator_version: int
    topic: str
    state: bytes
    key: bytes

    def stored_event(self) -> StoredEvent:
        """The event as eventsourcing stored it."""
        return StoredEvent(self.originator_id, self.originator_version, self.topic, self.state)


def payload_type(payload: bytes) -> bytes | None:
    """``HEADER``, ``EVENT`` or ``TRACKING``; None for a payload this module did not write."""
    if len(payload) < len(PREFIX) + 1 or payload[: len(PREFIX)] != PREFIX:
        return None
    kind = payload[len(PREFIX) : len(PREFIX) + 1]
    return kind if kind in (HEADER, EVENT, TRACKING) else None


def decode_header(payload: bytes) -> str:
    """The recorder name a header record holds."""
    return _text(payload[len(PREFIX) + 1 :], "header")


def decode_event(payload: bytes) -> DecodedEvent:
    """An event record's stored event and notification id; InvalidEvent if it is not one."""
    fields = event_fields(payload)
    if fields is None:
        raise InvalidEvent("an eventsourcing event record is malformed (or is no event record)")
    nid, version, id_type, id_bytes, topic, state = fields
    oid: UUID | str = _uuid(id_bytes) if id_type == UUID_ID else _text(id_bytes, "originator id")
    return DecodedEvent(nid, oid, version, _text(topic, "topic"), state, _key(id_type, id_bytes))


def notifications_in(
    records: Iterable[Record], lowest: int, last_id: int, limit: int, topics: set[str]
) -> list[Notification]:
    """The notifications of ``records`` with ids ``lowest .. last_id`` (and a topic of ``topics``, if
    any), up to ``limit`` of them: ``decode_event`` and the notification made from it in one loop,
    each topic decoded once (reading the notification log is this loop; a str id or a malformed
    record goes through ``decode_event``)."""
    found: list[Notification] = []
    unpack, head, start, event_kind = EVENT_HEADER.unpack_from, PREFIX + EVENT, EVENT_HEADER.size, RecordKind.EVENT
    names: dict[bytes, str] = {}
    ids: dict[bytes, UUID] = {}  # an aggregate's events are often side by side: one UUID object for them
    for record in records:
        payload = record.payload
        if record.kind is not event_kind or not payload.startswith(head):
            continue
        if len(payload) < start:
            decode_event(payload)  # raises InvalidEvent: shorter than an event's header
        _, nid, version, id_type, id_len, topic_len = unpack(payload)
        if nid < lowest:
            continue
        if nid > last_id:
            break
        at = start + id_len
        topic_bytes = payload[at : at + topic_len]
        topic = names.get(topic_bytes)
        if topic is None:
            topic = names[topic_bytes] = _text(topic_bytes, "topic")
        if topics and topic not in topics:
            continue
        if id_type == UUID_ID and id_len == UUID_SIZE and len(payload) >= at + topic_len:
            id_bytes = payload[start:at]
            oid: UUID | str | None = ids.get(id_bytes)
            if oid is None:
                oid = ids[id_bytes] = _uuid(id_bytes)
        else:
            oid = decode_event(payload).originator_id  # a str id, or a malformed record (InvalidEvent)
        found.append(_notification(oid, version, topic, payload[at + topic_len :], nid))
        if len(found) >= limit:
            break
    return found


def decode_tracking(payload: bytes) -> Tracking:
    """A tracking record's tracking object."""
    try:
        _, nid = TRACKING_HEADER.unpack_from(payload)
    except struct.error:
        raise InvalidEvent("an eventsourcing tracking record is shorter than its header") from None
    return Tracking(_text(payload[TRACKING_HEADER.size :], "application name"), nid)


def _uuid(data: bytes) -> UUID:
    """``UUID(bytes=data)`` for 16 bytes, made the way its ``__init__`` makes it (two slots) without
    the argument checks, which cost a read of the notification log more than a third of its time."""
    made = UUID.__new__(UUID)
    object.__setattr__(made, "int", int.from_bytes(data, "big"))
    object.__setattr__(made, "is_safe", SafeUUID.unknown)
    return made


_NOTIFICATION_FIELDS = ("originator_id", "originator_version", "topic", "state", "id")


def _notification_by_dict(oid: UUID | str, version: int, topic: str, state: bytes, nid: int) -> Notification:
    """``Notification(...)`` made by filling its ``__dict__``: a frozen dataclass's ``__init__`` sets
    each field through ``object.__setattr__``, 1.0 us a notification against 0.37 here."""
    made = object.__new__(Notification)
    fields = made.__dict__
    fields["originator_id"] = oid
    fields["originator_version"] = version
    fields["topic"] = topic
    fields["state"] = state
    fields["id"] = nid
    return made


# Only while Notification is the plain frozen dataclass this was written against (eventsourcing 9.5).
_notification = (
    _notification_by_dict
    if not hasattr(Notification, "__slots__")
    and not hasattr(Notification, "__post_init__")
    and tuple(f.name for f in dataclasses.fields(Notification)) == _NOTIFICATION_FIELDS
    else Notification
)


def utf8(text: str, what: str) -> bytes:
    """``text`` in UTF-8; InvalidArgument for a str that has none (a lone surrogate)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid Unicode text: {text!r}") from None


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent(f"an eventsourcing record's {what} is not UTF-8") from None
