"""Retention in the bucket (``Tiering.retain``) and verification from the signed anchor
(``remote.verify_anchored``, ``hybridlog verify s3://``), against a real S3 server (SeaweedFS).

Contracts tested here:

* Retention removes whole segments below the floor: the next manifest's floor is the start of the
  segment holding the requested offset, its anchor the chain hash of the record before it; the
  manifests still form one chain, and the dropped segments' objects are gone.
* Everything from the floor on verifies from the objects alone, from that anchor to the local
  chain head, also after more uploads; a changed or cut object is named; the reader that needs
  genesis refuses with RetainedBucket before fetching anything.
* Retention never takes the only copy: a floor above the bucket's head, or below a segment this
  store evicted, is refused and nothing changes. Objects a failed delete left are removed by the
  next call.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner

from hybridlog import Storage
from hybridlog.cli import cli
from hybridlog.errors import IntegrityError, InvalidArgument, ObjectStoreError, RetainedBucket
from hybridlog.eviction import evict
from hybridlog.manifest import Manifest, segments_prefix
from hybridlog.note import SignerKey
from hybridlog.objects import ObjectStore, open_objects
from hybridlog.remote import manifest_chain, verify_anchored
from hybridlog.tiering import Tiering


def fill(store: Storage, rng: random.Random, batches: int) -> None:
    for _ in range(batches):
        store.append(1, [f'{{"n": {rng.randrange(10**6)}, "pad": "{"z" * rng.randrange(300)}"}}'.encode()] * 6)


@contextmanager
def uploaded(where: Path, url: str, signer: SignerKey, seed: int, batches: int) -> Iterator[tuple[Storage, Manifest]]:
    """A store (4 KiB segments) with its sealed segments uploaded, and the bucket's last manifest."""
    with Storage(where, max_segment_size=4096) as store:
        fill(store, random.Random(seed), batches)
        Tiering(store, open_objects(url), signer).upload()
        yield store, manifest_chain(open_objects(url), 1, [signer.verifier])[-1]


def replace_object(objects: ObjectStore, key: str, data: bytes) -> None:
    objects.delete(key)
    assert objects.put_new(key, data)


def test_retention_drops_whole_segments_and_the_rest_verifies_from_the_signed_anchor(
    s3_url: str, tmp_path: Path, signer: SignerKey
) -> None:
    objects = open_objects(s3_url)
    with uploaded(tmp_path / "store", s3_url, signer, 1, 60) as (store, before):
        third = before.segments[3]
        report = Tiering(store, objects, signer).retain(1, third.first_offset + 2)
        chain = manifest_chain(objects, 1, [signer.verifier])  # still one chain, every link checked
        after = chain[-1]
        assert (report.manifest, report.floor, report.dropped_segments) == (after.number, third.first_offset, 3)
        assert after.segments == before.segments[3:]
        assert after.floor_hash == store.read_records_verified(1, third.first_offset - 1, 1)[0].hash
        remaining = objects.list(segments_prefix(1))
        assert report.deleted_objects == 3
        assert sorted(remaining) == sorted(s.key for s in after.segments)

        verified = verify_anchored(objects, [signer.verifier], tmp_path / "cache")
        assert [(s.stream_id, s.floor, s.head, s.records) for s in verified] == [
            (1, third.first_offset, before.head, before.head - third.first_offset)
        ]
        assert verified[0].head_hash == store.read_records_verified(1, before.head - 1, 1)[0].hash

        fill(store, random.Random(2), 30)  # uploads go on above the floor
        Tiering(store, objects, signer).upload()
        latest = manifest_chain(objects, 1, [signer.verifier])[-1]
        assert (latest.floor, latest.floor_hash) == (after.floor, after.floor_hash)
        verified = verify_anchored(objects, [signer.verifier], tmp_path / "cache2")
        assert verified[0].head == latest.head > before.head
    with pytest.raises(RetainedBucket):
        Storage.open_remote(s3_url, vkey=signer.verifier, cache_dir=tmp_path / "genesis")
    assert not (tmp_path / "genesis" / "streams").exists()  # refused before fetching anything


def test_the_remote_verify_of_a_retained_bucket_names_damage(s3_url: str, tmp_path: Path, signer: SignerKey) -> None:
    objects = open_objects(s3_url)
    with uploaded(tmp_path / "store", s3_url, signer, 3, 50) as (store, manifest):
        floor = manifest.segments[2].first_offset
        Tiering(store, objects, signer).retain(1, floor)
        head = store.read_records_verified(1, manifest_chain(objects, 1, [signer.verifier])[-1].head - 1, 1)[0]
    vkey = str(signer.verifier)
    result = CliRunner().invoke(cli, ["verify", s3_url, "--vkey", vkey, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [(s["stream_id"], s["ok"], s["floor"], s["head"]) for s in report["streams"]] == [
        (1, True, floor, head.hash.hex())
    ]
    first = manifest_chain(objects, 1, [signer.verifier])[-1].segments[0]
    data = bytearray(objects.get(first.key))
    data[40] ^= 0x10
    replace_object(objects, first.key, bytes(data))
    with pytest.raises(IntegrityError) as caught:
        verify_anchored(objects, [signer.verifier], tmp_path / "cache")
    assert caught.value.stream_id == 1
    result = CliRunner().invoke(cli, ["verify", s3_url, "--vkey", vkey])
    assert result.exit_code == 3
    objects.delete(first.key)
    with pytest.raises(ObjectStoreError):
        verify_anchored(objects, [signer.verifier], tmp_path / "cache3")


def test_retention_never_takes_the_only_copy(s3_url: str, tmp_path: Path, signer: SignerKey) -> None:
    objects = open_objects(s3_url)
    with uploaded(tmp_path / "store", s3_url, signer, 4, 50) as (store, manifest):
        keys = objects.list("")
        with pytest.raises(InvalidArgument, match="above"):
            Tiering(store, objects, signer).retain(1, manifest.head + 1)
        evict(store, objects, [signer.verifier], keep_bytes=4 * 4096)
        with pytest.raises(InvalidArgument, match="evicted"):
            Tiering(store, objects, signer).retain(1, manifest.segments[1].next_offset)
        assert objects.list("") == keys  # nothing published, nothing deleted


def test_objects_a_failed_delete_left_are_removed_by_the_next_call(
    s3_url: str, tmp_path: Path, signer: SignerKey
) -> None:
    objects = open_objects(s3_url)
    with uploaded(tmp_path / "store", s3_url, signer, 5, 50) as (store, manifest):
        tiering = Tiering(store, objects, signer)
        with (
            mock.patch.object(type(objects), "delete", side_effect=ObjectStoreError("connection reset")),
            pytest.raises(ObjectStoreError),
        ):
            tiering.retain(1, manifest.segments[2].first_offset)
        assert len(objects.list(segments_prefix(1))) == len(manifest.segments)  # the manifest went, objects stay
        report = tiering.retain(1, manifest.segments[2].first_offset)
        assert (report.dropped_segments, report.deleted_objects) == (0, 2)
        assert len(objects.list(segments_prefix(1))) == len(manifest.segments) - 2
        assert (
            verify_anchored(objects, [signer.verifier], tmp_path / "cache")[0].floor
            == manifest.segments[2].first_offset
        )
