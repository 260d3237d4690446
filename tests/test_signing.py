"""Signing by policy (``hybridlog/signing.py``): a head follows every commit, or at most one head
every N seconds and only when the tree grew; a publisher that cannot extend the last signed head
stops and says so; a read-only store and a bad interval are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hybridlog import HeadPublisher, HeadSigner, Storage
from hybridlog.errors import HeadNotExtended, InvalidArgument
from hybridlog.note import generate_key, note_text, open_note
from hybridlog.tree_head import parse_tree_head

ORIGIN = "hybridlog.example/signing-test"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[HeadSigner, str]:
    skey, vkey = generate_key(ORIGIN)
    key_file = tmp_path / "keys" / "head.key"
    key_file.parent.mkdir()
    key_file.write_text(skey)
    return HeadSigner(key_file), vkey


def signed_size(signed: str, vkey: str) -> int:
    """The size of a head, once its signature checks out with ``vkey``."""
    return parse_tree_head(open_note(signed, [vkey]).text).size


class Seconds:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_every_commit_is_followed_by_a_signed_head_covering_it(store_dir: Path, keys: tuple[HeadSigner, str]) -> None:
    signer, vkey = keys
    with Storage(store_dir) as store, HeadPublisher(store, signer) as publisher:
        for n in range(1, 8):
            store.append(n % 3, [b"event %d" % n] * n)
            size = store.tree.size()
            signed = publisher.wait_for(size, timeout=60)
            assert signed_size(signed, vkey) >= size
            assert store.prove_inclusion(n % 3, store.next_offset(n % 3) - 1, signed_size(signed, vkey)).index < size
        final = publisher.wait_for(store.tree.size(), timeout=60)
        assert store.tree.signed_heads() == [final]  # the store keeps the newest head
        assert signer.last_head() == parse_tree_head(note_text(final))


def test_an_interval_signs_at_most_once_per_interval_and_only_when_the_tree_grew(
    store_dir: Path, keys: tuple[HeadSigner, str]
) -> None:
    signer, vkey = keys
    clock = Seconds()
    with Storage(store_dir) as store:
        publisher = HeadPublisher(store, signer, every=30, clock=clock)  # driven by hand: never started
        assert publisher.step() is None  # an empty tree: nothing to sign
        store.append(1, [b"a", b"b"])
        first = publisher.step()
        assert first is not None
        assert signed_size(first, vkey) == 2
        store.append(1, [b"c"])
        clock.now += 29.9
        assert publisher.step() is None  # grown, but the interval is not over
        clock.now += 0.1
        second = publisher.step()
        assert second is not None
        assert signed_size(second, vkey) == 3
        clock.now += 300
        assert publisher.step() is None  # the interval is long over, but nothing new to sign
        store.append(2, [b"d"])
        third = publisher.step()
        assert third is not None
        assert signed_size(third, vkey) == 4


def test_a_publisher_that_cannot_extend_the_last_head_stops_and_says_why(
    tmp_path: Path, keys: tuple[HeadSigner, str]
) -> None:
    signer, _ = keys
    store_dir, backup = tmp_path / "store", tmp_path / "backup"
    with Storage(store_dir) as store:
        store.append(1, [b"a"])
    shutil.copytree(store_dir, backup)
    with Storage(store_dir) as store:
        store.append(1, [b"b", b"c"])
        signed = parse_tree_head(note_text(store.tree.sign(signer)))
    shutil.rmtree(store_dir)
    shutil.copytree(backup, store_dir)  # a restored backup: the store before the signed head
    with Storage(store_dir) as store:
        store.append(1, [b"x", b"y", b"z"])  # grown past the signed size: another history
        assert store.tree.size() > signed.size
        publisher = HeadPublisher(store, signer).start()
        with pytest.raises(HeadNotExtended):
            publisher.wait_for(store.tree.size(), timeout=60)
        with pytest.raises(HeadNotExtended):
            publisher.close()
        last = signer.last_head()
        assert last is not None
        assert last == signed


def test_a_publisher_ends_quietly_when_its_store_closes(store_dir: Path, keys: tuple[HeadSigner, str]) -> None:
    signer, _ = keys
    store = Storage(store_dir)
    publisher = HeadPublisher(store, signer).start()
    store.append(1, [b"a"])
    publisher.wait_for(1, timeout=60)
    store.close()
    publisher.close()  # no error: there was nothing more to sign
    with pytest.raises(InvalidArgument, match="already started"):
        publisher.start()


def test_bad_publishers_are_refused(store_dir: Path, keys: tuple[HeadSigner, str]) -> None:
    signer, _ = keys
    with Storage(store_dir) as store:
        store.append(1, [b"a"])
        for every in (0, -1, float("nan"), True):
            with pytest.raises(InvalidArgument, match="every"):
                HeadPublisher(store, signer, every=every)
    with Storage(store_dir, read_only=True) as reader, pytest.raises(InvalidArgument, match="read-only"):
        HeadPublisher(reader, signer)
    with Storage(store_dir) as store, HeadPublisher(store, signer) as publisher, pytest.raises(TimeoutError):
        publisher.wait_for(store.tree.size() + 1, timeout=0.01)  # no record comes: no head can cover it
