"""Tiering sealed segments to a real S3 server (SeaweedFS, ``hybridlog.testing.s3server``):
``hybridlog/objects.py``, ``manifest.py``, ``tiering.py``.

Contracts tested here:

* An upload puts every sealed segment (never the active one) and every dictionary in the bucket
  byte for byte under its content address, then a manifest, signed, that lists them with their
  offsets, digests and end-of-segment chain hashes; the manifests of a stream form a chain.
* An upload with nothing new sealed publishes nothing; a retry after a failure before the manifest
  uploads no object twice.
* Create-only PUTs on the real server: of six publishers racing for one manifest number, exactly
  one wins, every trial; six uploaders of one writer racing end with one manifest.
* A manifest of a higher writer epoch fences an uploader (WriterFenced); a changed byte in a
  manifest, or a key not trusted, is a ManifestError.
"""

from __future__ import annotations

import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner

from hybridlog import CompressionKind, Storage
from hybridlog.cli import cli
from hybridlog.errors import ManifestError, ObjectMissing, WriterFenced
from hybridlog.layout import dictionary_path, segment_path
from hybridlog.manifest import check_follows, manifest_key, manifests_prefix, open_manifest, unsigned_manifest
from hybridlog.note import generate_key, parse_signer_key
from hybridlog.objects import ObjectStore, open_objects
from hybridlog.segment import file_digest
from hybridlog.tiering import Tiering, latest_manifest
from hybridlog.types import StreamId

ORIGIN = "hybridlog.example/tier-test"


@pytest.fixture
def key() -> str:
    skey, _ = generate_key(ORIGIN)
    return skey


def fill(store: Storage, rng: random.Random, batches: int) -> None:
    words = ["deposit", "withdraw", "account", "customer", "amount", "currency", "EUR", "opened"]
    for _ in range(batches):
        events = [
            f'{{"type": "{rng.choice(words)}", "n": {rng.randrange(10**6)}, "note": "{note}"}}'
            for _ in range(rng.randint(5, 20))
            for note in [" ".join(rng.choices(words, k=8))]
        ]
        store.append(rng.choice((1, 2)), [e.encode() for e in events])


def manifests(objects: ObjectStore, stream_id: int) -> list[str]:
    return objects.list(manifests_prefix(stream_id))


def test_an_upload_puts_the_sealed_segments_then_a_signed_manifest_that_names_them(
    s3_url: str, store_dir: Path, key: str
) -> None:
    objects = open_objects(s3_url)
    signer = parse_signer_key(key)
    with Storage(store_dir, max_segment_size=4096, compression=CompressionKind.ZSTD) as store:
        fill(store, random.Random(15), 150)
        reports = Tiering(store, objects, signer).upload()
        assert [r.stream_id for r in reports] == [1, 2]
        for report in reports:
            found = latest_manifest(objects, report.stream_id, [signer.verifier])
            assert found is not None
            manifest, _ = found
            assert manifest.number == report.manifest == 1
            assert manifest.epoch == 1
            segments = store._writable_catalog().segments(StreamId(report.stream_id))
            sealed = [row for row in segments if row.sealed]
            assert len(sealed) == len(segments) - 1 >= 2  # every sealed one, not the active one
            assert [s.segment_no for s in manifest.segments] == [row.segment_no for row in sealed]
            for listed in manifest.segments:
                local = segment_path(store_dir, report.stream_id, listed.segment_no)
                assert objects.get(listed.key) == local.read_bytes()
                assert listed.digest == file_digest(local)
                last = store.read_records_verified(report.stream_id, listed.next_offset - 1, 1)[0]
                assert (last.offset, last.hash) == (listed.next_offset - 1, listed.end_hash)
            assert manifest.head == sealed[-1].next_offset
        assert Tiering(store, objects, signer).upload() == [
            type(r)(r.stream_id, r.manifest, 0, 0) for r in reports
        ]  # nothing new sealed: nothing published
        fill(store, random.Random(16), 100)
        again = Tiering(store, objects, signer).upload()
        for before, after in zip(reports, again, strict=True):
            assert after.manifest == 2
            assert after.segments > 0
            first = objects.get(manifest_key(before.stream_id, 1)).decode()
            second = open_manifest(objects.get(manifest_key(before.stream_id, 2)).decode(), [signer.verifier])
            check_follows(unsigned_manifest(first), first, second)
            assert second.dictionaries  # zstd trained one for the stream by now
            for dictionary in second.dictionaries:
                local = dictionary_path(store_dir, before.stream_id, dictionary.dictionary_no)
                assert objects.get(dictionary.key) == local.read_bytes()


def test_a_retry_after_a_failure_before_the_manifest_uploads_no_object_twice(
    s3_url: str, store_dir: Path, key: str
) -> None:
    objects = open_objects(s3_url)
    signer = parse_signer_key(key)
    with Storage(store_dir, max_segment_size=4096) as store:
        fill(store, random.Random(17), 60)
        real_put = objects.put_new

        def objects_only(key: str, data: bytes) -> bool:
            if "/manifests/" in key:
                raise ConnectionError("the network went away before the manifest")
            return real_put(key, data)

        with mock.patch.object(objects, "put_new", side_effect=objects_only), pytest.raises(ConnectionError):
            Tiering(store, objects, signer).upload_stream(1)
        uploaded = objects.list("streams/1/")
        assert uploaded
        assert not manifests(objects, 1)
        report = Tiering(store, objects, signer).upload_stream(1)
        assert report.uploaded_bytes == 0  # every object was there already, under its content address
        assert objects.list("streams/1/") == sorted([*uploaded, manifest_key(1, 1)])


def test_six_publishers_racing_for_one_manifest_number_one_wins_every_trial(s3_url: str) -> None:
    objects = open_objects(s3_url)
    for trial in range(12):
        barrier = threading.Barrier(6)

        def publish(n: int, trial: int = trial, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            return objects.put_new(manifest_key(9, trial + 1), f"publisher {n}".encode())

        with ThreadPoolExecutor(6) as pool:
            won = [n for n, created in enumerate(pool.map(publish, range(6))) if created]
        assert len(won) == 1, f"trial {trial}: {won} all created the manifest"
        assert objects.get(manifest_key(9, trial + 1)) == f"publisher {won[0]}".encode()


def test_uploaders_of_one_writer_racing_leave_one_manifest(s3_url: str, store_dir: Path, key: str) -> None:
    objects = open_objects(s3_url)
    signer = parse_signer_key(key)
    with Storage(store_dir, max_segment_size=4096) as store:
        fill(store, random.Random(18), 60)
        with ThreadPoolExecutor(6) as pool:
            reports = list(pool.map(lambda _: Tiering(store, objects, signer).upload_stream(2), range(6)))
    assert {r.manifest for r in reports} == {1}
    assert manifests(objects, 2) == [manifest_key(2, 1)]


def test_a_higher_epoch_fences_the_old_writer(s3_url: str, store_dir: Path, key: str) -> None:
    objects = open_objects(s3_url)
    signer = parse_signer_key(key)
    with Storage(store_dir, max_segment_size=4096) as store:
        fill(store, random.Random(19), 40)
        Tiering(store, objects, signer, epoch=1).upload_stream(1)
        fill(store, random.Random(20), 40)
        assert Tiering(store, objects, signer, epoch=2).upload_stream(1).manifest == 2  # the new writer
        fill(store, random.Random(21), 40)
        with pytest.raises(WriterFenced):
            Tiering(store, objects, signer, epoch=1).upload_stream(1)
    assert len(manifests(objects, 1)) == 2


def test_a_changed_manifest_or_an_untrusted_key_is_refused(s3_url: str, store_dir: Path, key: str) -> None:
    objects = open_objects(s3_url)
    signer = parse_signer_key(key)
    with Storage(store_dir, max_segment_size=4096) as store:
        fill(store, random.Random(22), 40)
        Tiering(store, objects, signer).upload_stream(1)
    signed = objects.get(manifest_key(1, 1)).decode()
    assert open_manifest(signed, [signer.verifier]).number == 1
    changed = signed.replace("epoch 1", "epoch 7")
    with pytest.raises(ManifestError, match="signature"):
        open_manifest(changed, [signer.verifier])
    _, other = generate_key(ORIGIN)
    with pytest.raises(ManifestError, match="signature"):
        open_manifest(signed, [other])
    with pytest.raises(ObjectMissing):
        objects.get(manifest_key(1, 2))


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_the_tier_commands_upload_and_report(s3_url: str, store_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "tier.key"
    code, vkey, _ = run("key", "generate", ORIGIN, "--out", str(key_file))
    assert code == 0
    vkey = vkey.strip()
    with Storage(store_dir, max_segment_size=4096) as store:
        fill(store, random.Random(23), 60)
    code, out, err = run("tier", "status", str(store_dir), "--url", s3_url, "--vkey", vkey, "--json")
    assert code == 0, err
    before = json.loads(out)
    assert [s["manifest"] for s in before] == [None, None]
    assert all(s["pending_segments"] > 0 and s["pending_bytes"] > 0 for s in before)
    code, out, err = run("tier", str(store_dir), "--url", s3_url, "--key", str(key_file), "--json")
    assert code == 0, err
    uploaded = json.loads(out)
    assert [(u["manifest"], u["segments"]) for u in uploaded] == [(1, s["pending_segments"]) for s in before]
    code, out, err = run("tier", "status", str(store_dir), "--url", s3_url, "--vkey", vkey)
    assert code == 0, err
    assert out.count("manifest 1 (epoch 1)") == 2
    assert out.count("0 segments (0 bytes) to upload") == 2
    code, _, err = run("tier", "upload", str(store_dir), "--url", s3_url, "--key", str(key_file), "--epoch", "1")
    assert code == 0, err
    code, _, err = run("tier", "status", str(store_dir), "--url", "http://example.com/x", "--vkey", vkey)
    assert code == 1
    assert "not an object store URL" in err
