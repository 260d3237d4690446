"""The payloads ``hybridlog.eventsourcing`` writes: one record per stored event, per tracking object,
and one header naming the recorder's stream (``docs/eventsourcing.md`` section 2).

Every payload starts with the 4 bytes ``HLES``, a codec version (1) and a one-letter type. All
integers are little-endian. The notification id of an event is in its payload, so it is a fact of the
segments: it is hashed and chained with the record, and no rebuild of any index can renumber it.

    header    b"HLES" 01 b"H"  name (UTF-8)
    event     b"HLES" 01 b"E"  notification_id u64, originator_version i64, id_type u8 (0 UUID, 1 str),
                               id_len u16, topic_len u16, originator id, topic (UTF-8), state
    tracking  b"HLES" 01 b"T"  notification_id u64, application name (UTF-8)
"""

from __future__ import annotations

import struct
from typing import NamedTuple
from uuid import UUID, SafeUUID

from eventsourcing.persistence import Notification, StoredEvent, Tracking

from hybridlog.errors import InvalidArgument, InvalidEvent

PREFIX = b"HLES\x01"
HEADER, EVENT, TRACKING = b"H", b"E", b"T"

_EVENT = struct.Struct("<6sQqBHH")  # prefix + type, notification id, version, id type, id length, topic length
_TRACKING = struct.Struct("<6sQ")
_UUID, _STR = 0, 1
_UUID_SIZE = 16
_MAX_U16 = 0xFFFF
_MAX_U64 = 2**64 - 1
_MIN_I64, _MAX_I64 = -(2**63), 2**63 - 1


def originator_key(originator_id: UUID | str) -> bytes:
    """The index key of an originator id: its type (0 UUID, 1 str) and its bytes, so a UUID and the
    string of its hex are different aggregates, as they are to eventsourcing."""
    if isinstance(originator_id, UUID):
        return b"\x00" + originator_id.bytes
    if isinstance(originator_id, str):
        return b"\x01" + originator_id.encode("utf-8")
    raise InvalidArgument(f"an originator id must be a UUID or a str, not {type(originator_id).__name__}")


def encode_header(name: str) -> bytes:
    """The first record of a recorder's stream: the recorder's name."""
    return PREFIX + HEADER + name.encode("utf-8")


def encode_event(event: StoredEvent, notification_id: int) -> bytes:
    """One stored event as a record payload; InvalidArgument for a field eventsourcing would not make."""
    oid = event.originator_id
    if isinstance(oid, UUID):
        id_type, id_bytes = _UUID, oid.bytes
    elif isinstance(oid, str):
        id_type, id_bytes = _STR, oid.encode("utf-8")
    else:
        raise InvalidArgument(f"originator_id must be a UUID or a str, not {type(oid).__name__}")
    version = event.originator_version
    if isinstance(version, bool) or not isinstance(version, int) or not _MIN_I64 <= version <= _MAX_I64:
        raise InvalidArgument(f"originator_version must be a 64-bit int, not {version!r}")
    if not isinstance(event.topic, str):
        raise InvalidArgument(f"topic must be a str, not {type(event.topic).__name__}")
    if not isinstance(event.state, bytes | bytearray | memoryview):
        raise InvalidArgument(f"state must be bytes, not {type(event.state).__name__}")
    topic = event.topic.encode("utf-8")
    if len(id_bytes) > _MAX_U16 or len(topic) > _MAX_U16:
        raise InvalidArgument("an originator id or topic is longer than 65535 bytes")
    head = _EVENT.pack(PREFIX + EVENT, notification_id, version, id_type, len(id_bytes), len(topic))
    return b"".join((head, id_bytes, topic, event.state))


def encode_tracking(tracking: Tracking) -> bytes:
    """A tracking object as a record payload."""
    name, nid = tracking.application_name, tracking.notification_id
    if not isinstance(name, str) or isinstance(nid, bool) or not isinstance(nid, int) or not 0 <= nid <= _MAX_U64:
        raise InvalidArgument(f"a tracking object needs a str name and an int id >= 0, not {tracking!r}")
    return _TRACKING.pack(PREFIX + TRACKING, nid) + name.encode("utf-8")


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

    def notification(self) -> Notification:
        """The event as a notification of the application sequence."""
        return Notification(self.originator_id, self.originator_version, self.topic, self.state, self.notification_id)


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
    try:
        _, nid, version, id_type, id_len, topic_len = _EVENT.unpack_from(payload)
    except struct.error:
        raise InvalidEvent("an eventsourcing event record is shorter than its header") from None
    start = _EVENT.size
    id_bytes = payload[start : start + id_len]
    topic = payload[start + id_len : start + id_len + topic_len]
    bad_uuid = id_type == _UUID and id_len != _UUID_SIZE
    if len(id_bytes) != id_len or len(topic) != topic_len or id_type not in (_UUID, _STR) or bad_uuid:
        raise InvalidEvent("an eventsourcing event record is malformed")
    oid: UUID | str = _uuid(id_bytes) if id_type == _UUID else _text(id_bytes, "originator id")
    state = payload[start + id_len + topic_len :]
    key = (b"\x00" if id_type == _UUID else b"\x01") + id_bytes
    return DecodedEvent(nid, oid, version, _text(topic, "topic"), state, key)


def decode_tracking(payload: bytes) -> Tracking:
    """A tracking record's tracking object."""
    try:
        _, nid = _TRACKING.unpack_from(payload)
    except struct.error:
        raise InvalidEvent("an eventsourcing tracking record is shorter than its header") from None
    return Tracking(_text(payload[_TRACKING.size :], "application name"), nid)


def _uuid(data: bytes) -> UUID:
    """``UUID(bytes=data)`` for 16 bytes, made the way its ``__init__`` makes it (two slots) without
    the argument checks, which cost a read of the notification log more than a third of its time."""
    made = UUID.__new__(UUID)
    object.__setattr__(made, "int", int.from_bytes(data, "big"))
    object.__setattr__(made, "is_safe", SafeUUID.unknown)
    return made


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent(f"an eventsourcing record's {what} is not UTF-8") from None
