"""Per-stream manifests: the commit point of a stream's objects in an object store
(``docs/tiering.md``, ``docs/format.md`` section 9).

A manifest is the full state of one stream in the bucket: the retention floor and the chain hash
it is anchored on, the head (next offset and chain hash), every segment object (number, offsets,
size, BLAKE3 digest, the chain hash of its last record, key) and every dictionary object, the
writer epoch, and the SHA-256 of the manifest before it. It is the text of a C2SP signed note,
signed with the same Ed25519 keys as the signed tree heads (``note.py``), and written create-only
under the next number; the manifest with the highest number is the stream's state.

    hybridlog manifest v1
    origin example.com/log
    stream 7
    number 2
    previous 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    epoch 1
    floor 0 0000000000000000000000000000000000000000000000000000000000000000
    head 500 <chain hash of offset 499>
    dictionary 32768 11230 <blake3> streams/7/dictionaries/32768.<blake3>.zdict
    segment 0 0 500 1048210 <blake3> <chain hash of offset 499> streams/7/segments/0000000000.<blake3>.seg

Hashes are 64 lowercase hex digits; numbers are decimal without leading zeros. ``previous`` is
``none`` in manifest 1. Segments are listed in order and contiguous, from the floor to the head.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from hybridlog.errors import ManifestError, ProofError
from hybridlog.note import SignerKey, VerifierKey, note_text, open_note, sign_note
from hybridlog.types import GENESIS_HASH

FIRST_LINE = "hybridlog manifest v1"
MANIFEST_DIGITS = 20
SEGMENT_DIGITS = 10


def segment_key(stream_id: int, segment_no: int, digest: bytes) -> str:
    """Where a sealed segment goes: its number (for people) and its digest (the content address)."""
    return f"streams/{stream_id}/segments/{segment_no:0{SEGMENT_DIGITS}d}.{digest.hex()}.seg"


def segments_prefix(stream_id: int) -> str:
    """Where a stream's segment objects are."""
    return f"streams/{stream_id}/segments/"


_SEGMENT_KEY = re.compile(rf"^streams/\d+/segments/(\d{{{SEGMENT_DIGITS},}})\.[0-9a-f]{{64}}\.seg$")


def segment_key_number(key: str) -> int | None:
    """The segment number a segment object's key gives (None: not a segment object's key)."""
    match = _SEGMENT_KEY.match(key)
    return None if match is None else int(match.group(1))


def dictionary_key(stream_id: int, dictionary_no: int, digest: bytes) -> str:
    """Where a stream's dictionary goes."""
    return f"streams/{stream_id}/dictionaries/{dictionary_no}.{digest.hex()}.zdict"


def manifests_prefix(stream_id: int) -> str:
    """The prefix every manifest of a stream is under."""
    return f"streams/{stream_id}/manifests/"


def manifest_key(stream_id: int, number: int) -> str:
    """Where manifest ``number`` of a stream goes (numbers padded: keys sort as numbers do)."""
    return f"{manifests_prefix(stream_id)}{number:0{MANIFEST_DIGITS}d}.manifest"


def manifest_number(key: str) -> int | None:
    """The number in a manifest key (None: not a manifest key)."""
    found = re.fullmatch(rf"streams/\d+/manifests/(\d{{{MANIFEST_DIGITS}}})\.manifest", key)
    return None if found is None else int(found.group(1))


@dataclass(frozen=True, slots=True)
class SegmentObject:
    """A sealed segment in the object store."""

    segment_no: int
    first_offset: int
    next_offset: int
    size: int
    digest: bytes
    end_hash: bytes
    key: str


@dataclass(frozen=True, slots=True)
class DictionaryObject:
    """A stream's zstd dictionary in the object store."""

    dictionary_no: int
    size: int
    digest: bytes
    key: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """One stream's state in the object store (see the module docstring)."""

    origin: str
    stream_id: int
    number: int
    previous: bytes | None
    epoch: int
    floor: int
    floor_hash: bytes
    head: int
    head_hash: bytes
    dictionaries: tuple[DictionaryObject, ...]
    segments: tuple[SegmentObject, ...]

    def text(self) -> str:
        """The note text."""
        lines = [
            FIRST_LINE,
            f"origin {self.origin}",
            f"stream {self.stream_id}",
            f"number {self.number}",
            f"previous {'none' if self.previous is None else self.previous.hex()}",
            f"epoch {self.epoch}",
            f"floor {self.floor} {self.floor_hash.hex()}",
            f"head {self.head} {self.head_hash.hex()}",
        ]
        lines += [f"dictionary {d.dictionary_no} {d.size} {d.digest.hex()} {d.key}" for d in self.dictionaries]
        lines += [
            f"segment {s.segment_no} {s.first_offset} {s.next_offset} {s.size}"
            f" {s.digest.hex()} {s.end_hash.hex()} {s.key}"
            for s in self.segments
        ]
        return "".join(line + "\n" for line in lines)


def manifest_digest(signed: str) -> bytes:
    """What the next manifest names as ``previous``: SHA-256 of this one's signed note."""
    return hashlib.sha256(signed.encode()).digest()


def sign_manifest(manifest: Manifest, key: SignerKey) -> str:
    """The manifest as a signed note."""
    return sign_note(manifest.text(), key)


def open_manifest(signed: str, vkeys: list[str] | list[VerifierKey]) -> Manifest:
    """The manifest in a signed note, its signature checked against ``vkeys``; ManifestError if it is
    not signed by one of them or is not a well-formed manifest."""
    try:
        text = open_note(signed, vkeys).text
    except ProofError as e:
        raise ManifestError(f"the manifest's signature does not verify: {e}") from e
    return parse_manifest(text)


def unsigned_manifest(signed: str) -> Manifest:
    """The manifest in a signed note, its signature not checked (for tests and tools that show it)."""
    try:
        return parse_manifest(note_text(signed))
    except ProofError as e:
        raise ManifestError(f"not a signed note: {e}") from e


_NUMBER = r"(0|[1-9]\d*)"
_HASH = r"([0-9a-f]{64})"
_LINES = {
    "origin": re.compile(r"origin (\S+)"),
    "stream": re.compile(rf"stream {_NUMBER}"),
    "number": re.compile(rf"number {_NUMBER}"),
    "previous": re.compile(rf"previous (none|{_HASH[1:-1]})"),
    "epoch": re.compile(rf"epoch {_NUMBER}"),
    "floor": re.compile(rf"floor {_NUMBER} {_HASH}"),
    "head": re.compile(rf"head {_NUMBER} {_HASH}"),
}
_DICTIONARY = re.compile(rf"dictionary {_NUMBER} {_NUMBER} {_HASH} (\S+)")
_SEGMENT = re.compile(rf"segment {_NUMBER} {_NUMBER} {_NUMBER} {_NUMBER} {_HASH} {_HASH} (\S+)")


def parse_manifest(text: str) -> Manifest:
    """A manifest from its note text; ManifestError unless it is well formed and consistent."""
    if not text.endswith("\n"):
        raise ManifestError("a manifest's text ends with a newline")
    lines = text[:-1].split("\n")
    if lines[0] != FIRST_LINE or len(lines) < 1 + len(_LINES):
        raise ManifestError(f"not a manifest: it starts {lines[0]!r}")
    fields: dict[str, tuple[str, ...]] = {}
    for (name, pattern), line in zip(_LINES.items(), lines[1:], strict=False):
        found = pattern.fullmatch(line)
        if found is None:
            raise ManifestError(f"manifest line {line!r} is not a well-formed {name} line")
        fields[name] = found.groups()
    dictionaries: list[DictionaryObject] = []
    segments: list[SegmentObject] = []
    stream_id = int(fields["stream"][0])
    for line in lines[1 + len(_LINES) :]:
        if (d := _DICTIONARY.fullmatch(line)) is not None and not segments:
            no, size, digest = int(d.group(1)), int(d.group(2)), bytes.fromhex(d.group(3))
            if d.group(4) != dictionary_key(stream_id, no, digest):
                raise ManifestError(f"dictionary {no} is at {d.group(4)}, not at its content address")
            dictionaries.append(DictionaryObject(no, size, digest, d.group(4)))
        elif (s := _SEGMENT.fullmatch(line)) is not None:
            no, first, nxt, size = (int(s.group(i)) for i in range(1, 5))
            digest, end_hash = bytes.fromhex(s.group(5)), bytes.fromhex(s.group(6))
            if s.group(7) != segment_key(stream_id, no, digest):
                raise ManifestError(f"segment {no} is at {s.group(7)}, not at its content address")
            segments.append(SegmentObject(no, first, nxt, size, digest, end_hash, s.group(7)))
        else:
            raise ManifestError(f"manifest line {line!r} is not a dictionary or segment line (in that order)")
    previous = fields["previous"][0]
    manifest = Manifest(
        origin=fields["origin"][0],
        stream_id=stream_id,
        number=int(fields["number"][0]),
        previous=None if previous == "none" else bytes.fromhex(previous),
        epoch=int(fields["epoch"][0]),
        floor=int(fields["floor"][0]),
        floor_hash=bytes.fromhex(fields["floor"][1]),
        head=int(fields["head"][0]),
        head_hash=bytes.fromhex(fields["head"][1]),
        dictionaries=tuple(dictionaries),
        segments=tuple(segments),
    )
    _check_consistent(manifest)
    return manifest


def _check_consistent(m: Manifest) -> None:
    if m.number < 1 or (m.number == 1) != (m.previous is None):
        raise ManifestError(f"manifest {m.number} must name its previous manifest exactly when it is not the first")
    if m.floor == 0 and m.floor_hash != GENESIS_HASH:
        raise ManifestError("a manifest from offset 0 is anchored on the genesis hash")
    at, link = m.floor, m.floor_hash
    numbers = [s.segment_no for s in m.segments]
    if numbers != sorted(set(numbers)):
        raise ManifestError("a manifest lists its segments by increasing number, each once")
    for s in m.segments:
        if s.first_offset != at or s.next_offset <= s.first_offset:
            raise ManifestError(
                f"segment {s.segment_no} holds offsets {s.first_offset}..{s.next_offset}, not from {at}"
            )
        at, link = s.next_offset, s.end_hash
    if (m.head, m.head_hash) != (at, link):
        raise ManifestError(f"the manifest's head ({m.head}) is not where its segments end ({at})")


def check_follows(previous: Manifest, previous_signed: str, manifest: Manifest) -> None:
    """ManifestError unless ``manifest`` follows on from ``previous``: the next number, naming its
    digest, same stream and origin, an epoch no lower, and the same segments from its floor on,
    extended (retention may drop segments from the front only)."""
    if (manifest.origin, manifest.stream_id) != (previous.origin, previous.stream_id):
        raise ManifestError("a manifest follows one of the same origin and stream")
    if manifest.number != previous.number + 1 or manifest.previous != manifest_digest(previous_signed):
        raise ManifestError(f"manifest {manifest.number} does not follow manifest {previous.number}")
    if manifest.epoch < previous.epoch:
        raise ManifestError(
            f"manifest {manifest.number} lowers the writer epoch ({previous.epoch} -> {manifest.epoch})"
        )
    kept = [s for s in previous.segments if s.first_offset >= manifest.floor]
    if manifest.floor < previous.floor or tuple(kept) != manifest.segments[: len(kept)]:
        raise ManifestError(f"manifest {manifest.number} changes segments manifest {previous.number} listed")
