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

import dataclasses
import json
import random
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner

from hybridlog import CheckpointPolicy, CompressionKind, Storage, failpoints
from hybridlog.cli import cli
from hybridlog.errors import BucketCutBack, IntegrityError, ManifestError, ObjectMissing, WriterFenced
from hybridlog.layout import dictionary_path, segment_path
from hybridlog.manifest import (
    check_follows,
    manifest_key,
    manifests_prefix,
    open_manifest,
    sign_manifest,
    unsigned_manifest,
)
from hybridlog.note import SignerKey, generate_key, parse_signer_key
from hybridlog.objects import ObjectStore, open_objects
from hybridlog.remote import manifest_chain, remote_stream_ids
from hybridlog.segment import file_digest
from hybridlog.testing.harness import kill_self, run_until_killed
from hybridlog.tiering import Tiering, latest_manifest
from hybridlog.types import StreamId

ORIGIN = "hybridlog.example/tier-test"


def replace_object(objects: ObjectStore, key: str, data: bytes) -> None:
    """Rewrite an object in place (what an attacker with write access to the bucket can do)."""
    objects.delete(key)
    assert objects.put_new(key, data)


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
    s3_url: str, store_dir: Path, signer: SignerKey
) -> None:
    objects = open_objects(s3_url)
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
    s3_url: str, store_dir: Path, signer: SignerKey
) -> None:
    objects = open_objects(s3_url)
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


def test_uploaders_of_one_writer_racing_leave_one_manifest(s3_url: str, store_dir: Path, signer: SignerKey) -> None:
    objects = open_objects(s3_url)
    with Storage(store_dir, max_segment_size=4096) as store:
        fill(store, random.Random(18), 60)
        with ThreadPoolExecutor(6) as pool:
            reports = list(pool.map(lambda _: Tiering(store, objects, signer).upload_stream(2), range(6)))
    assert {r.manifest for r in reports} == {1}
    assert manifests(objects, 2) == [manifest_key(2, 1)]


def test_a_higher_epoch_fences_the_old_writer(s3_url: str, store_dir: Path, signer: SignerKey) -> None:
    objects = open_objects(s3_url)
    with Storage(store_dir, max_segment_size=4096) as store:
        fill(store, random.Random(19), 40)
        Tiering(store, objects, signer, epoch=1).upload_stream(1)
        fill(store, random.Random(20), 40)
        assert Tiering(store, objects, signer, epoch=2).upload_stream(1).manifest == 2  # the new writer
        fill(store, random.Random(21), 40)
        with pytest.raises(WriterFenced):
            Tiering(store, objects, signer, epoch=1).upload_stream(1)
    assert len(manifests(objects, 1)) == 2


def test_a_changed_manifest_or_an_untrusted_key_is_refused(s3_url: str, store_dir: Path, signer: SignerKey) -> None:
    objects = open_objects(s3_url)
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
    code, out, err = run("verify", s3_url, "--vkey", vkey, "--json")  # the full remote verify
    assert code == 0, err
    verified = json.loads(out)
    with Storage(store_dir, read_only=True) as store:  # it ends at the local chain head of what was sealed
        for stream, status in zip(verified["streams"], before, strict=True):
            last = store.read_records_verified(stream["stream_id"], status["sealed_head"] - 1, 1)[0]
            assert (stream["ok"], stream["head"]) == (True, last.hash.hex())
    objects = open_objects(s3_url)
    segment = objects.list("streams/2/segments/")[0]
    damaged = bytearray(objects.get(segment))
    damaged[200] ^= 1
    replace_object(objects, segment, bytes(damaged))
    code, _, err = run("verify", s3_url, "--vkey", vkey)
    assert code == 3, err
    assert "stream 2" in err
    code, _, err = run("tier", "status", str(store_dir), "--url", "http://example.com/x", "--vkey", vkey)
    assert code == 1
    assert "not an object store URL" in err


def test_a_remote_reader_verifies_and_reads_the_store_from_its_objects_alone(
    s3_url: str, store_dir: Path, tmp_path: Path, signer: SignerKey
) -> None:
    with Storage(store_dir, max_segment_size=4096, compression=CompressionKind.ZSTD) as store:
        fill(store, random.Random(24), 250)
        reports = Tiering(store, open_objects(s3_url), signer).upload()
        expected = {}
        for report in reports:
            head = latest_manifest(open_objects(s3_url), report.stream_id, [signer.verifier])
            assert head is not None
            records = list(store.iter_records(report.stream_id, 0, anchored=False))[: head[0].head]
            expected[report.stream_id] = records
    elsewhere = tmp_path / "another-host"  # never saw the writer's directory
    with Storage.open_remote(s3_url, vkey=str(signer.verifier), cache_dir=elsewhere) as remote:
        assert remote.read_only
        for sid, records in expected.items():
            got = list(remote.iter_records(sid, 0, anchored=False))
            assert [(r.offset, r.hash, r.payload) for r in got] == [(r.offset, r.hash, r.payload) for r in records]
            assert remote.latest_chain_hash(sid) == records[-1].hash  # ends at the uploaded chain head
        rows = remote.sql("SELECT stream_id, count(*) FROM events GROUP BY stream_id ORDER BY stream_id").rows
        assert [tuple(row) for row in rows] == [(sid, len(records)) for sid, records in sorted(expected.items())]
    with Storage.open_remote(s3_url, vkey=str(signer.verifier), cache_dir=elsewhere) as again:  # from the cache
        assert again.next_offset(1) == len(expected[1])


def test_a_flipped_byte_in_any_segment_object_is_named_by_the_remote_reader(
    s3_url: str, store_dir: Path, tmp_path: Path, signer: SignerKey
) -> None:
    objects = open_objects(s3_url)
    with Storage(store_dir, max_segment_size=4096) as store:
        fill(store, random.Random(25), 60)
        Tiering(store, objects, signer).upload_stream(1)
    found = latest_manifest(objects, 1, [signer.verifier])
    assert found is not None
    rng = random.Random(26)
    for trial, segment in enumerate(found[0].segments):
        original = objects.get(segment.key)
        damaged = bytearray(original)
        at = rng.randrange(len(damaged))
        damaged[at] ^= 0x40
        replace_object(objects, segment.key, bytes(damaged))
        with pytest.raises(IntegrityError) as caught:
            Storage.open_remote(s3_url, vkey=str(signer.verifier), cache_dir=tmp_path / f"cache-{trial}").close()
        assert caught.value.stream_id == 1
        assert caught.value.offset is not None
        assert segment.first_offset <= caught.value.offset < segment.next_offset + 1
        replace_object(objects, segment.key, original)
    Storage.open_remote(s3_url, vkey=str(signer.verifier), cache_dir=tmp_path / "clean").close()


def test_a_tail_cut_or_a_rewritten_stream_in_the_bucket_is_caught_against_a_manifest_seen_before(
    s3_url: str, store_dir: Path, tmp_path: Path, signer: SignerKey
) -> None:
    objects = open_objects(s3_url)
    with Storage(store_dir, max_segment_size=4096, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        for n in range(3):
            fill(store, random.Random(40 + n), 25)
            Tiering(store, objects, signer).upload_stream(1)
    seen = objects.get(manifest_key(1, 3)).decode()  # an auditor kept the last manifest
    (tmp_path / "seen.manifest").write_text(seen)
    vkey = str(signer.verifier)
    Storage.open_remote(s3_url, vkey=vkey, cache_dir=tmp_path / "before", against=[seen]).close()
    last = unsigned_manifest(seen)
    objects.delete(manifest_key(1, 3))  # the tail cut: the bucket goes back to manifest 2
    Storage.open_remote(s3_url, vkey=vkey, cache_dir=tmp_path / "cut").close()  # consistent on its own
    with pytest.raises(BucketCutBack, match="manifest 3 of stream 1"):
        Storage.open_remote(s3_url, vkey=vkey, cache_dir=tmp_path / "cut-again", against=[seen])
    code, _, err = run("verify", s3_url, "--vkey", vkey, "--against", str(tmp_path / "seen.manifest"))
    assert code == 3, err
    rewritten = dataclasses.replace(last, epoch=2)  # another history under the same key and number
    assert objects.put_new(manifest_key(1, 3), sign_manifest(rewritten, signer).encode())
    with pytest.raises(BucketCutBack):
        Storage.open_remote(s3_url, vkey=vkey, cache_dir=tmp_path / "rewritten", against=[seen])


def test_a_missing_or_foreign_manifest_is_refused_by_the_remote_reader(
    s3_url: str, store_dir: Path, tmp_path: Path, signer: SignerKey
) -> None:
    objects = open_objects(s3_url)
    with Storage(store_dir, max_segment_size=4096) as store:
        for n in range(3):
            fill(store, random.Random(27 + n), 30)
            Tiering(store, objects, signer).upload_stream(1)
    assert manifests(objects, 1) == [manifest_key(1, n) for n in (1, 2, 3)]
    second = objects.get(manifest_key(1, 2))
    objects.delete(manifest_key(1, 2))
    with pytest.raises(ManifestError, match="not numbered"):
        Storage.open_remote(s3_url, vkey=str(signer.verifier), cache_dir=tmp_path / "a")
    other = parse_signer_key(generate_key(ORIGIN)[0])
    forged = sign_manifest(unsigned_manifest(second.decode()), other)
    assert objects.put_new(manifest_key(1, 2), forged.encode())
    with pytest.raises(ManifestError, match="signature"):
        Storage.open_remote(s3_url, vkey=str(signer.verifier), cache_dir=tmp_path / "b")


# --- the uploader killed at every step of the upload order -----------------------------------------

THIS_FILE = Path(__file__).resolve()
STREAMS = (StreamId(1), StreamId(2))


def child_upload(store_dir: Path, url: str, key_file: Path, step: str, nth: int) -> None:
    """Upload ``store_dir`` (read-only) and die by SIGKILL at the ``nth`` time ``step`` is reached."""
    hits = 0

    def maybe_die() -> None:
        nonlocal hits
        hits += 1
        if hits == nth:
            kill_self()

    failpoints.arm(step, maybe_die)
    with Storage(store_dir, read_only=True) as store:
        Tiering(store, open_objects(url), parse_signer_key(key_file.read_text())).upload()
    print("finished without being killed", flush=True)


def test_an_uploader_killed_at_every_step_leaves_whole_manifests_and_a_retry_no_duplicate(
    s3_url: str, store_dir: Path, tmp_path: Path, signer: SignerKey
) -> None:
    key_file = tmp_path / "tier.key"
    key_file.write_text(str(signer))
    with Storage(store_dir, max_segment_size=4096, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        fill(store, random.Random(31), 10)
        sealed = {sid: [row for row in store._writable_catalog().segments(sid) if row.sealed] for sid in STREAMS}
        heads = {
            sid: store.read_records_verified(sid, rows[-1].next_offset - 1, 1)[0].hash for sid, rows in sealed.items()
        }
    objects_count = sum(len(rows) for rows in sealed.values())
    assert all(len(rows) >= 2 for rows in sealed.values())
    plans = [("object-uploaded", n) for n in range(1, objects_count + 1)]
    plans += [(step, n) for step in ("manifest-built", "manifest-published") for n in (1, 2)]
    for round_no, (step, nth) in enumerate(plans):
        url = f"{s3_url}/round-{round_no}"
        run_until_killed(THIS_FILE, "upload", str(store_dir), url, str(key_file), step, str(nth), plan=None)
        objects = open_objects(url)
        published = {sid: manifest_chain(objects, sid, [signer.verifier]) for sid in remote_stream_ids(objects)}
        if published:  # a reader sees whole manifests, each naming only objects that are there
            with Storage.open_remote(url, vkey=signer.verifier, cache_dir=tmp_path / f"seen-{round_no}") as remote:
                for sid, chain in published.items():
                    assert remote.next_offset(sid) == chain[-1].head
        with Storage(store_dir, read_only=True) as store:
            Tiering(store, objects, signer).upload()  # the retry
        for sid, rows in sealed.items():
            assert len(objects.list(f"streams/{sid}/segments/")) == len(rows), (step, nth)  # none twice
            assert manifests(objects, sid) == [manifest_key(sid, 1)]
        with Storage.open_remote(url, vkey=signer.verifier, cache_dir=tmp_path / f"after-{round_no}") as remote:
            assert {sid: remote.latest_chain_hash(sid) for sid in sealed} == heads


if __name__ == "__main__":
    command, directory, url, key_path, step_name, nth_text = sys.argv[1:]
    assert command == "upload"
    child_upload(Path(directory), url, Path(key_path), step_name, int(nth_text))
