"""Manifests and the directory object store (``hybridlog/manifest.py``, ``objects.py``), without a
server.

* The vector in ``docs/format.md`` section 11: the key signs exactly that manifest, which parses
  back to the same fields, and whose digest is the one given.
* A manifest that is not well formed, or not consistent (segments not contiguous from the floor,
  a head that is not where they end, a key that is not the content address, a missing or
  unexpected ``previous``), is a ManifestError; so is one that does not follow the one before
  (``check_follows``).
* ``DirectoryObjects``: a create-only write creates a key once, of racing writers exactly one;
  reads, ranges, listing, deleting; keys that would leave the directory are refused.
* An upload refuses a bucket that holds another history of the stream (ManifestError), or more of
  it than the store has (WriterFenced), and publishes nothing.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hybridlog import CheckpointPolicy, Storage
from hybridlog.errors import InvalidArgument, ManifestError, ObjectMissing, WriterFenced
from hybridlog.manifest import (
    Manifest,
    SegmentObject,
    check_follows,
    manifest_digest,
    manifest_key,
    manifest_number,
    open_manifest,
    parse_manifest,
    segment_key,
    sign_manifest,
)
from hybridlog.note import parse_signer_key, verify_note
from hybridlog.objects import DirectoryObjects, open_objects
from hybridlog.tiering import Tiering
from hybridlog.types import GENESIS_HASH

FORMAT_DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"
VECTOR = re.compile(r"^```hybridlog-manifest-vector\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def doc_vector() -> tuple[str, str, str, bytes]:
    """(signer key, verifier key, signed manifest, digest) from docs/format.md section 11."""
    (block,) = VECTOR.findall(FORMAT_DOC.read_text(encoding="utf-8"))
    skey, vkey, rest = block.split("\n", 2)
    signed, digest_line = rest.rstrip("\n").rsplit("\n", 1)
    assert digest_line.startswith("digest ")
    return skey, vkey, signed + "\n", bytes.fromhex(digest_line.removeprefix("digest "))


def test_the_documented_vector_is_what_the_key_signs_and_parses_back() -> None:
    skey, vkey, signed, digest = doc_vector()
    key = parse_signer_key(skey)
    assert str(key.verifier) == vkey
    manifest = open_manifest(signed, [vkey])
    assert sign_manifest(manifest, key) == signed  # Ed25519 is deterministic: the same bytes
    assert manifest_digest(signed) == digest
    assert verify_note(signed, [vkey]) == ["example.com/log"]  # any C2SP note verifier checks it
    assert (manifest.stream_id, manifest.number, manifest.epoch, manifest.head) == (7, 2, 1, 900)
    assert [(s.segment_no, s.first_offset, s.next_offset) for s in manifest.segments] == [(0, 0, 500), (1, 500, 900)]
    assert manifest.segments[1].end_hash == manifest.head_hash == bytes([0x44]) * 32


def example(number: int = 1, *, segments: int = 2, epoch: int = 1, previous: bytes | None = None) -> Manifest:
    listed = tuple(
        SegmentObject(
            no,
            100 * no,
            100 * (no + 1),
            4096,
            bytes([no + 1]) * 32,
            bytes([0x80 + no]) * 32,
            segment_key(3, no, bytes([no + 1]) * 32),
        )
        for no in range(segments)
    )
    head = listed[-1].next_offset if listed else 0
    head_hash = listed[-1].end_hash if listed else GENESIS_HASH
    return Manifest("o", 3, number, previous, epoch, 0, GENESIS_HASH, head, head_hash, (), listed)


def test_a_manifest_round_trips_and_its_keys_sort_by_number() -> None:
    manifest = example()
    assert parse_manifest(manifest.text()) == manifest
    assert manifest_number(manifest_key(3, 12)) == 12
    assert manifest_number("streams/3/manifests/12.manifest") is None
    keys = [manifest_key(3, n) for n in (1, 2, 10, 100)]
    assert sorted(keys) == keys


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda t: t.replace("hybridlog manifest v1", "hybridlog manifest v2"), "not a manifest"),
        (lambda t: t.replace("stream 3", "stream 03"), "stream line"),
        (lambda t: t.replace("epoch 1", "epoch -1"), "epoch line"),
        (lambda t: t.replace("head 200", "head 201"), "head"),
        (lambda t: t.replace("segment 1 100 200", "segment 1 101 200"), "not from 100"),
        (lambda t: t.replace(".0202", ".0303"), "content address"),
        (lambda t: t.replace("previous none", "previous " + "ab" * 32), "previous"),
        (lambda t: t.replace("floor 0 " + "00" * 32, "floor 0 " + "01" * 32), "genesis"),
        (lambda t: t + "segment\n", "not a dictionary or segment line"),
        (lambda t: t[:-1], "newline"),
    ],
)
def test_a_manifest_that_is_not_well_formed_or_consistent_is_refused(change: object, problem: str) -> None:
    text = example().text()
    assert callable(change)
    changed = change(text)
    assert changed != text
    with pytest.raises(ManifestError, match=problem):
        parse_manifest(changed)


def test_a_manifest_follows_only_the_one_before_it() -> None:
    skey, _, _, _ = doc_vector()
    key = parse_signer_key(skey)
    first = example(segments=1)
    first_signed = sign_manifest(first, key)
    second = example(2, segments=2, previous=manifest_digest(first_signed))
    check_follows(first, first_signed, second)
    resized = dataclasses.replace(second.segments[0], size=1)
    for bad, problem in [
        (dataclasses.replace(second, number=3), "does not follow"),
        (dataclasses.replace(second, previous=bytes(32)), "does not follow"),
        (dataclasses.replace(second, epoch=0), "lowers the writer epoch"),
        (dataclasses.replace(second, stream_id=4), "same origin and stream"),
        (
            dataclasses.replace(second, segments=(resized, *second.segments[1:])),
            "changes segments",
        ),
    ]:
        with pytest.raises(ManifestError, match=problem):
            check_follows(first, first_signed, bad)


def test_a_directory_object_store_creates_each_key_once(tmp_path: Path) -> None:
    objects = open_objects((tmp_path / "bucket").as_uri())
    assert isinstance(objects, DirectoryObjects)
    assert objects.put_new("streams/1/a.seg", b"abcdef")
    assert not objects.put_new("streams/1/a.seg", b"other")
    assert objects.get("streams/1/a.seg") == b"abcdef"
    assert objects.get_range("streams/1/a.seg", 2, 4) == b"cd"
    assert objects.list("streams/") == ["streams/1/a.seg"]
    objects.delete("streams/1/a.seg")
    objects.delete("streams/1/a.seg")
    with pytest.raises(ObjectMissing):
        objects.get("streams/1/a.seg")
    for bad in ("", "/abs", "a/../b", "a//b"):
        with pytest.raises(InvalidArgument):
            objects.put_new(bad, b"x")
    with pytest.raises(InvalidArgument):
        open_objects("http://example.com/bucket")
    for trial in range(20):
        barrier = threading.Barrier(6)

        def create(n: int, trial: int = trial, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            return objects.put_new(f"race/{trial}", str(n).encode())

        with ThreadPoolExecutor(6) as pool:
            assert sum(pool.map(create, range(6))) == 1


def test_an_upload_refuses_a_bucket_that_holds_another_history_of_the_stream(tmp_path: Path) -> None:
    objects = open_objects((tmp_path / "bucket").as_uri())
    key = parse_signer_key(doc_vector()[0])
    for name, text in (("first", b"one history %d"), ("second", b"another history %d")):
        with Storage(tmp_path / name, max_segment_size=4096, checkpoint_policy=CheckpointPolicy.explicit()) as store:
            for n in range(200):
                store.append(1, [text % n])
    with Storage(tmp_path / "first", read_only=True) as first:
        assert Tiering(first, objects, key).upload_stream(1).manifest == 1
    with Storage(tmp_path / "second", read_only=True) as second, pytest.raises(ManifestError, match="another history"):
        Tiering(second, objects, key).upload_stream(1)
    with Storage(tmp_path / "short", checkpoint_policy=CheckpointPolicy.explicit()) as short:
        short.append(1, [b"one history 0"])
        with pytest.raises(WriterFenced, match="another writer"):
            Tiering(short, objects, key).upload_stream(1)
    assert objects.list("streams/1/manifests/") == [manifest_key(1, 1)]
