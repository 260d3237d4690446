"""Tree heads: the C2SP ``tlog-checkpoint`` text a signed note carries, and the store's leaf entry.

A tree head says which tree a log had: its origin (the log's name), its size and its root hash::

    <origin>\\n
    <size, ASCII decimal, no leading zeros>\\n
    <root hash, base64>\\n
    [extension lines]

signed as a note (``hybridlog.note``) by the log's key, and cosigned by witnesses where there are
any. ``hybridlog.merkle`` proves what a head covers. Standard library only.

The leaves of a store's tree are entries of 58 bytes, one per global position (leaf index =
global position - 1), big-endian as RFC 6962's own structures are:

    offset  size  field
         0     1  version         1
         1     1  kind            0 event, 1 checkpoint, 2 repair marker; 255: no record has
                                  this position (a gap: every other field is zero)
         2     8  stream_id       u64
        10     8  offset          u64, the record's offset in its stream
        18     8  timestamp_ns    u64
        26    32  record_hash     the record's BLAKE3 chain hash (which covers its payload, its
                                  global position and the hash of the record before it)
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from hybridlog.errors import ProofError
from hybridlog.merkle import HASH_SIZE

LEAF_VERSION = 1
GAP_KIND = 255
LEAF = struct.Struct(">BBQQQ32s")
GAP_ENTRY = LEAF.pack(LEAF_VERSION, GAP_KIND, 0, 0, 0, bytes(32))


@dataclass(frozen=True, slots=True)
class LeafEntry:
    """What one leaf of a store's tree says: the record at its position, or that none is there."""

    kind: int
    stream_id: int
    offset: int
    timestamp_ns: int
    record_hash: bytes

    @property
    def is_gap(self) -> bool:
        """Whether no record has this leaf's position."""
        return self.kind == GAP_KIND

    def encode(self) -> bytes:
        """The entry's 58 bytes."""
        return LEAF.pack(LEAF_VERSION, self.kind, self.stream_id, self.offset, self.timestamp_ns, self.record_hash)


def leaf_entry(kind: int, stream_id: int, offset: int, timestamp_ns: int, record_hash: bytes) -> bytes:
    """The leaf entry of a record."""
    return LEAF.pack(LEAF_VERSION, kind, stream_id, offset, timestamp_ns, record_hash)


def decode_leaf(entry: bytes) -> LeafEntry:
    """The fields of a leaf entry; ProofError if it is not one."""
    if len(entry) != LEAF.size:
        raise ProofError(f"a leaf entry is {LEAF.size} bytes, not {len(entry)}")
    version, kind, stream_id, offset, timestamp_ns, record_hash = LEAF.unpack(entry)
    if version != LEAF_VERSION:
        raise ProofError(f"leaf entry version {version} is not {LEAF_VERSION}")
    if kind not in (0, 1, 2, GAP_KIND) or (kind == GAP_KIND and entry != GAP_ENTRY):
        raise ProofError(f"leaf entry kind {kind} is not a record kind or a well-formed gap")
    return LeafEntry(kind, stream_id, offset, timestamp_ns, record_hash)


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A tree head: the log's origin, its tree's size and root, and any extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        """The head as a checkpoint's note text."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_tree_head(text: str) -> TreeHead:
    """A tree head from a checkpoint's note text (not the signed note: ``note.open_note`` first);
    ProofError if it is not a well-formed one."""
    if not text.endswith("\n"):
        raise ProofError("a checkpoint's text ends with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise ProofError("a checkpoint has an origin, a size and a root hash")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise ProofError("a checkpoint's origin is empty")
    if not size_text.isascii() or not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise ProofError(f"a checkpoint's size is not a decimal number: {size_text!r}")
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProofError(f"a checkpoint's root hash is not base64: {root_text!r}") from e
    if len(root) != HASH_SIZE:
        raise ProofError(f"a checkpoint's root hash is {len(root)} bytes, not {HASH_SIZE}")
    if any(not line for line in extensions):
        raise ProofError("a checkpoint's extension line is empty")
    return TreeHead(origin, int(size_text), root, tuple(extensions))
