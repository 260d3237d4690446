"""Fencing writers through the bucket (``hybridlog/fence.py``, ``Tiering.claim``), against a real
S3 server (SeaweedFS).

Contracts tested here:

* A host restored from the bucket claims the streams with a higher epoch before writing; from then
  on the old host's uploader stops with WriterFenced and its writer refuses every append with
  WriterFenced (the fence is a file, so an uploader in another process fences the writer too), while
  its reads go on; the fence outlives a reopen.
* The new host appends and uploads at its epoch; the bucket's manifests form one chain.
* A claim needs an epoch above the bucket's and a store that holds every stream up to the bucket's
  head; a refused claim publishes nothing.
* A fenced store that still holds the bucket's history takes its streams back with a higher epoch.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from hybridlog import Storage
from hybridlog.cli import cli
from hybridlog.errors import InvalidArgument, ManifestError, WriterFenced
from hybridlog.layout import FENCE_FILE
from hybridlog.manifest import manifests_prefix
from hybridlog.note import SignerKey
from hybridlog.objects import open_objects
from hybridlog.remote import manifest_chain
from hybridlog.tiering import Tiering, latest_manifest


def fill(store: Storage, rng: random.Random, batches: int) -> None:
    for _ in range(batches):
        store.append(rng.choice((1, 2)), [f'{{"n": {rng.randrange(10**6)}, "pad": "{"y" * 150}"}}'.encode()] * 8)


def restored(url: str, signer: SignerKey, where: Path) -> Path:
    """A store on a "new host": everything the bucket holds, fetched and verified into ``where``."""
    with Storage.open_remote(url, vkey=signer.verifier, cache_dir=where):
        pass
    return where


def test_a_claim_fences_the_old_writer_and_the_new_host_writes_on(
    s3_url: str, tmp_path: Path, signer: SignerKey
) -> None:
    objects = open_objects(s3_url)
    old = Storage(tmp_path / "old", max_segment_size=4096)
    try:
        fill(old, random.Random(1), 60)
        Tiering(old, objects, signer).upload()
        new_dir = restored(s3_url, signer, tmp_path / "new")
        with Storage(new_dir, max_segment_size=4096) as new:
            claimed = Tiering(new, objects, signer, epoch=2).claim()
            assert {r.stream_id for r in claimed} == {1, 2}
            for sid in (1, 2):
                latest = latest_manifest(objects, sid, [signer.verifier])
                assert latest is not None
                assert latest[0].epoch == 2
            fill(new, random.Random(2), 40)  # the new host writes, then uploads at its epoch
            Tiering(new, objects, signer, epoch=2).upload()

        heads_before = {sid: old.next_offset(sid) for sid in (1, 2)}
        fill(old, random.Random(3), 1)  # the old writer does not know yet
        with pytest.raises(WriterFenced):
            Tiering(old, objects, signer).upload()  # its uploader learns, and fences it
        assert (tmp_path / "old" / FENCE_FILE).exists()
        with pytest.raises(WriterFenced):
            old.append(1, [b'{"late": true}'])
        assert old.read_records_verified(1, 0, 1)  # reads go on
        after = {sid: old.next_offset(sid) for sid in (1, 2)}
        assert sum(after.values()) == sum(heads_before.values()) + 8
    finally:
        old.close()
    with Storage(tmp_path / "old") as reopened, pytest.raises(WriterFenced):
        reopened.append(2, [b"{}"])
    for sid in (1, 2):  # one chain of manifests, epochs 1 then 2
        chain = manifest_chain(objects, sid, [signer.verifier])
        assert [m.epoch for m in chain] == sorted(m.epoch for m in chain)
        assert chain[-1].epoch == 2


def test_an_uploader_in_another_process_fences_the_running_writer(
    s3_url: str, tmp_path: Path, signer: SignerKey
) -> None:
    key_file = tmp_path / "tier.key"
    key_file.write_text(str(signer))
    objects = open_objects(s3_url)
    with Storage(tmp_path / "old", max_segment_size=4096) as old:
        fill(old, random.Random(4), 40)
        Tiering(old, objects, signer).upload()
        new_dir = restored(s3_url, signer, tmp_path / "new")
        result = CliRunner().invoke(
            cli, ["tier", "claim", str(new_dir), "--url", s3_url, "--key", str(key_file), "--epoch", "2"]
        )
        assert result.exit_code == 0, result.output
        fill(old, random.Random(5), 2)  # appends go on until the uploader learns
        result = CliRunner().invoke(cli, ["tier", str(tmp_path / "old"), "--url", s3_url, "--key", str(key_file)])
        assert result.exit_code == 1
        assert "epoch 2, above ours (1)" in result.output
        with pytest.raises(WriterFenced):
            old.append(1, [b"{}"])


def test_a_claim_needs_a_higher_epoch_and_the_whole_history(s3_url: str, tmp_path: Path, signer: SignerKey) -> None:
    objects = open_objects(s3_url)
    with Storage(tmp_path / "a", max_segment_size=4096) as a:
        fill(a, random.Random(6), 40)
        Tiering(a, objects, signer).upload()
        published = {sid: objects.list(manifests_prefix(sid)) for sid in (1, 2)}
        with pytest.raises(InvalidArgument):
            Tiering(a, objects, signer, epoch=1).claim()
    with Storage(tmp_path / "partial", max_segment_size=4096) as partial:
        partial.append(1, [b"{}"])
        with pytest.raises(ManifestError, match="lacks"):
            Tiering(partial, objects, signer, epoch=5).claim()
    with Storage(tmp_path / "short", max_segment_size=4096) as short:
        for sid in (1, 2):
            short.append(sid, [b"{}"])
        with pytest.raises(ManifestError, match="restore"):
            Tiering(short, objects, signer, epoch=5).claim()
    assert {sid: objects.list(manifests_prefix(sid)) for sid in (1, 2)} == published  # nothing published


def test_a_fenced_store_takes_its_streams_back_with_a_higher_epoch(
    s3_url: str, tmp_path: Path, signer: SignerKey
) -> None:
    objects = open_objects(s3_url)
    with Storage(tmp_path / "a", max_segment_size=4096) as a:
        fill(a, random.Random(7), 40)
        Tiering(a, objects, signer).upload()
        with Storage(restored(s3_url, signer, tmp_path / "b")) as b:
            Tiering(b, objects, signer, epoch=2).claim()
        with pytest.raises(WriterFenced):
            Tiering(a, objects, signer).upload()
        with pytest.raises(WriterFenced):
            a.append(1, [b"{}"])
        Tiering(a, objects, signer, epoch=3).claim()  # b wrote nothing: a still holds the history
        assert not (tmp_path / "a" / FENCE_FILE).exists()
        a.append(1, [b'{"back": true}'])
        fill(a, random.Random(8), 30)
        assert Tiering(a, objects, signer, epoch=3).upload()[0].segments > 0
