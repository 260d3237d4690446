"""Stream dictionaries: trained by the writer, used for new records, read back on every path, failing safely.

Contracts tested here:

* **Training and use.** With zstd on, once a stream has 1,000 sampled events the writer trains a
  dictionary, writes ``<next offset>.zdict`` in the stream's directory, and compresses every later
  event of that stream with it (flag bit 2, the zstd frame naming the dictionary); records before
  it stay plain zstd. Both kinds read back exactly through verified reads from genesis and from
  checkpoints, across segment rotation, after reopening (the newest dictionary is loaded and used,
  no new one is trained), in a read-only store, and after the catalog is rebuilt from the segments.
* **Training never costs a batch.** A dictionary that does not pay is not used; a training or file
  write that fails leaves the batch committed and the stream on plain zstd. Samples of all streams
  stay within the budget; an idle stream's samples make room for an active one.
* **Damage.** A dictionary file with a flipped byte, or one belonging to another stream, fails the
  verified read with ``DamagedDictionary``; a deleted one with ``MissingDictionary``; each names the
  stream, the offset of the first record that needs it, the segment and byte, and the file, with a
  hint to restore it; records before it still read; ``check`` reports it (``damaged_dictionary`` /
  ``missing_dictionary``); restoring the file makes everything readable again without reopening.
  A forged dictionary that passes the file checks is still caught by the record hash. A writer never
  reuses a dictionary number, even after a file went missing.
* **Crashes.** Writers killed (SIGKILL) at seeded steps before, during and after training lose
  nothing acknowledged and leave a store ``check`` finds clean. A writer killed right after writing
  a dictionary file, before any record used it, loses nothing acknowledged, and the next writer
  uses that dictionary. Records past the
  catalog's end that need a missing dictionary are reported as damage, never cut as a torn tail
  (even when such a record ends the file), and are adopted once the file is back.
"""

from __future__ import annotations

import json
import random
import sys
import threading
from pathlib import Path

import pytest
import zstandard

from hybridlog import (
    CheckpointPolicy,
    ChecksumMismatch,
    CompressionKind,
    DamagedDictionary,
    FindingKind,
    HashMismatch,
    IntegrityError,
    MissingDictionary,
    Record,
    RecordKind,
    RecoveryAction,
    RepairKind,
    Storage,
    StorageError,
    StreamId,
    verify_store,
)
from hybridlog.dictionary import DICTIONARY_HEADER
from hybridlog.layout import DICTIONARY_SUFFIX, dictionary_path, segment_path, stream_path
from hybridlog.record import FLAG_COMPRESSED, FLAG_DICTIONARY, FrameError, dictionary_no_of
from hybridlog.segment import SegmentReader
from hybridlog.testing.clocks import make_clock
from hybridlog.testing.damage import (
    delete_catalog,
    flip_byte,
    genesis_events,
    genesis_records,
    quarantine_files,
    rollback_catalog,
    save_catalog,
)
from hybridlog.testing.harness import KillPlan, acknowledge, arm_from_environment, kill_self, run_until_killed
from hybridlog.training import TRAIN_AFTER_SAMPLES, DictionaryTrainer, train_dictionary

THIS_FILE = Path(__file__).resolve()
SID = 7
SEGMENT_SIZE = 64 * 1024

_TYPES = ("payment.authorized", "payment.captured", "order.created", "order.shipped", "user.login")
_WORDS = [
    "account",
    "balance",
    "transfer",
    "pending",
    "settled",
    "refund",
    "invoice",
    "customer",
    "merchant",
    "approved",
    "review",
]


def json_event(rng: random.Random, seq: int) -> bytes:
    """A varied JSON event of about 200 bytes, like the benchmark's (ids, types, amounts, free text)."""
    return json.dumps(
        {
            "id": f"evt_{seq:010d}_{rng.getrandbits(32):08x}",
            "type": rng.choice(_TYPES),
            "account": f"acct-{rng.randrange(1_000_000):06d}",
            "amount": round(rng.uniform(0.5, 25_000.0), 2),
            "currency": rng.choice(("EUR", "USD", "GBP")),
            "note": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9))),
        },
        separators=(",", ":"),
    ).encode()


def json_events(count: int, seed: int, start: int = 0) -> list[bytes]:
    rng = random.Random(f"{seed}/{start}")
    return [json_event(rng, start + i) for i in range(count)]


def open_writer(path: Path, **options: object) -> Storage:
    settings: dict[str, object] = {
        "compression": CompressionKind.ZSTD,
        "max_segment_size": SEGMENT_SIZE,
        "checkpoint_policy": CheckpointPolicy.every(500),
        "clock": make_clock(),
    }
    settings.update(options)
    return Storage(path, **settings)  # type: ignore[arg-type]


def append_in_batches(store: Storage, stream_id: int, events: list[bytes], batch: int = 100) -> None:
    for start in range(0, len(events), batch):
        store.append(stream_id, events[start : start + batch], fsync=False)


def dictionary_files(data_dir: Path, stream_id: int = SID) -> list[Path]:
    return sorted(stream_path(data_dir, stream_id).glob(f"*{DICTIONARY_SUFFIX}"))


def stored_records(data_dir: Path, stream_id: int = SID) -> list[tuple[int, int, int | None, int]]:
    """(offset, flags, dictionary number or None, stored payload length) of every record on disk (up
    to the zeros a killed writer's active segment may end with: space it reserved ahead)."""
    found = []
    for segment in sorted(stream_path(data_dir, stream_id).glob("*.seg")):
        with SegmentReader(segment) as reader:
            while True:
                try:
                    frame = reader.read_frame()
                except FrameError:
                    assert not segment.read_bytes()[reader.position :].strip(b"\0"), "a bad frame, not reserved space"
                    break
                if frame is None:
                    break
                number = None
                if frame.header.uses_dictionary:
                    number = dictionary_no_of(zstandard.get_frame_parameters(frame.stored).dict_id)
                found.append((frame.header.offset, frame.header.flags, number, frame.header.stored_len))
    return found


def events_of(records: list[Record]) -> list[bytes]:
    return [r.payload for r in records if r.kind is RecordKind.EVENT]


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, list[bytes], int]:
    """A closed store whose stream SID holds 1,500 events: 1,000 before its dictionary, 500 after.

    Returns the store's directory, the events, and the dictionary's number.
    """
    data_dir = tmp_path / "store"
    events = json_events(1500, seed=1)
    with open_writer(data_dir) as store:
        append_in_batches(store, SID, events)
    (dictionary,) = dictionary_files(data_dir)
    return data_dir, events, int(dictionary.stem)


def first_dictionary_record(data_dir: Path, stream_id: int = SID) -> int:
    return next(offset for offset, flags, _, _ in stored_records(data_dir, stream_id) if flags & FLAG_DICTIONARY)


# --- training and use ------------------------------------------------------------------------------


def test_a_dictionary_is_trained_after_enough_events_and_used_from_then_on(
    trained: tuple[Path, list[bytes], int],
) -> None:
    """The dictionary is numbered by the next offset when it was trained; later events use it, earlier do not."""
    data_dir, events, number = trained
    records = stored_records(data_dir)
    # Batches of 100 with a checkpoint after every 500 events: the 10th batch brings the samples to
    # 1,000 and ends at offset 1,002 (two checkpoints before it).
    assert TRAIN_AFTER_SAMPLES == 1000
    assert number == 1002
    for offset, flags, used, _ in records:
        if offset < number:
            assert not flags & FLAG_DICTIONARY, offset
        elif flags & FLAG_COMPRESSED:
            assert flags & FLAG_DICTIONARY, offset
            assert used == number
    with_dictionary = [stored for _, flags, _, stored in records if flags & FLAG_DICTIONARY]
    plain = [stored for _, flags, _, stored in records if flags == FLAG_COMPRESSED]
    assert len(with_dictionary) == 500  # every event after training (checkpoints never shrink)
    assert sum(with_dictionary) / len(with_dictionary) < 0.75 * sum(plain) / len(plain)
    assert len(list(stream_path(data_dir, SID).glob("*.seg"))) > 1  # rotation happened on the way

    with Storage(data_dir, read_only=True) as reader:
        assert genesis_events(reader, SID) == events
        # Anchored at checkpoints before and after the dictionary, and a single record.
        assert events_of(list(reader.iter_records(SID, 700))) == events[699:]
        assert events_of(list(reader.iter_records(SID, 1300))) == events[1298:]
        assert reader.read_from(SID, number + 5, 1) == [events[number + 3]]
        assert verify_store(reader).ok


def test_reopening_loads_the_newest_dictionary_for_new_records(trained: tuple[Path, list[bytes], int]) -> None:
    """A new writer compresses with the dictionary on disk (the highest-numbered one); it trains none."""
    data_dir, events, number = trained
    more = json_events(300, seed=2)
    with open_writer(data_dir) as store:
        append_in_batches(store, SID, more)
        assert genesis_events(store, SID) == events + more
    assert [int(p.stem) for p in dictionary_files(data_dir)] == [number]
    after = [r for r in stored_records(data_dir) if r[0] > 1500 and r[1] & FLAG_COMPRESSED]
    assert after
    assert all(used == number for _, _, used, _ in after)

    # A newer dictionary for the stream (as a later training would leave it) is the one used next.
    newer = train_dictionary(SID, 5000, json_events(1000, seed=3))
    assert newer is not None
    dictionary_path(data_dir, SID, 5000).write_bytes(newer.file_bytes())
    last = json_events(50, seed=4)
    with open_writer(data_dir) as store:
        start = store.next_offset(SID)
        store.append(SID, last)
        assert genesis_events(store, SID) == events + more + last
    compressed = [r for r in stored_records(data_dir) if r[0] >= start and r[1] & FLAG_COMPRESSED]
    assert {used for _, _, used, _ in compressed} == {5000}


def test_rebuilt_catalog_reads_dictionary_records(trained: tuple[Path, list[bytes], int]) -> None:
    """Rebuilding the catalog from the segments (on request, or when it is missing) indexes every record."""
    data_dir, events, _ = trained
    with open_writer(data_dir) as store:
        store.rebuild_catalog()
        assert genesis_events(store, SID) == events
        assert store.check().ok
    delete_catalog(data_dir)
    with open_writer(data_dir) as store:
        assert genesis_events(store, SID) == events
        assert store.check().findings == []


def test_threads_crossing_the_threshold_together_train_one_dictionary(tmp_path: Path) -> None:
    """Four threads appending to one stream past the threshold: one dictionary, every event readable."""
    data_dir = tmp_path / "store"
    per_thread = {t: json_events(400, seed=10 + t) for t in range(4)}
    with open_writer(data_dir, clock=None) as store:

        def work(t: int) -> None:
            for start in range(0, 400, 10):
                store.append(SID, per_thread[t][start : start + 10])

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        got = genesis_events(store, SID)
    assert sorted(got) == sorted(e for events in per_thread.values() for e in events)
    for events in per_thread.values():
        mine = set(events)
        assert [e for e in got if e in mine] == events  # each thread's order kept
    assert len(dictionary_files(data_dir)) == 1
    assert any(flags & FLAG_DICTIONARY for _, flags, _, _ in stored_records(data_dir))


# --- training never costs a batch ------------------------------------------------------------------


def test_a_dictionary_that_does_not_pay_is_not_used(tmp_path: Path) -> None:
    """Random payloads: zstd trains something, but it stores them no smaller, so none is written."""
    data_dir = tmp_path / "store"
    rng = random.Random(5)
    events = [rng.randbytes(200) for _ in range(1200)]
    with open_writer(data_dir) as store:
        append_in_batches(store, SID, events)
        assert genesis_events(store, SID) == events
    assert dictionary_files(data_dir) == []
    assert not any(flags & FLAG_DICTIONARY for _, flags, _, _ in stored_records(data_dir))


@pytest.mark.parametrize("failure", ["training", "file write"])
def test_a_failing_training_leaves_the_batch_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """zstd failing to train, or the dictionary file failing to be written: the append returns, plain zstd goes on."""

    def cannot_train(*args: object, **kwargs: object) -> None:
        raise zstandard.ZstdError("cannot train")

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    if failure == "training":
        monkeypatch.setattr(zstandard, "train_dictionary", cannot_train)
    else:
        monkeypatch.setattr("hybridlog.training.write_file_durably", disk_full)
    data_dir = tmp_path / "store"
    events = json_events(1200, seed=6)
    with open_writer(data_dir) as store:
        for start in range(0, 1200, 100):
            head = store.append(SID, events[start : start + 100], fsync=False)
            assert head[0] == store.next_offset(SID)
        assert genesis_events(store, SID) == events
        assert store.check().ok
    assert list(stream_path(data_dir, SID).glob("*.zdict*")) == []
    assert not any(flags & FLAG_DICTIONARY for _, flags, _, _ in stored_records(data_dir))


def test_samples_stay_within_the_budget_and_idle_streams_make_room(tmp_path: Path) -> None:
    """With room for one stream's samples, a second stream samples only once the first went idle."""
    data_dir = tmp_path / "store"
    for sid in (1, 2):
        stream_path(data_dir, sid).mkdir(parents=True)
    now = [0.0]
    from hybridlog.dictionary import DictionaryCache

    trainer = DictionaryTrainer(data_dir, DictionaryCache(data_dir), sample_budget=200 * 1024, monotonic=lambda: now[0])
    first, second = json_events(900, seed=7), json_events(1000, seed=8)
    trainer.observe(1, first, next_offset=900)  # about 180 KiB of samples: most of the budget
    trainer.observe(2, second, next_offset=1000)  # does not fit, and stream 1 is not idle
    assert dictionary_files(data_dir, 2) == []
    now[0] = 61.0  # stream 1 idle for over a minute: its samples give way
    trainer.observe(2, second, next_offset=2000)
    assert [p.name for p in dictionary_files(data_dir, 2)] == [dictionary_path(data_dir, 2, 2000).name]
    assert trainer.dictionary(2) is not None
    assert trainer.dictionary(1) is None  # it lost its samples and has not collected enough again


# --- damage ----------------------------------------------------------------------------------------


def read_until_error(store: Storage) -> tuple[list[bytes], IntegrityError]:
    """The events a verified read from genesis yields before it raises, and the error."""
    got: list[bytes] = []
    try:
        got.extend(r.payload for r in store.iter_records(SID, 0, anchored=False) if r.kind is RecordKind.EVENT)
    except IntegrityError as e:
        return got, e
    pytest.fail("the read did not fail")


@pytest.mark.parametrize("damage", ["flipped byte", "deleted", "another stream's"])
def test_an_unusable_dictionary_fails_the_read_by_name_and_check_reports_it(
    trained: tuple[Path, list[bytes], int], damage: str
) -> None:
    data_dir, events, number = trained
    path = dictionary_path(data_dir, SID, number)
    original = path.read_bytes()
    first = first_dictionary_record(data_dir)
    if damage == "flipped byte":
        flip_byte(path, len(original) // 2)
    elif damage == "deleted":
        path.unlink()
    else:
        other = train_dictionary(SID + 1, number, json_events(1000, seed=9))
        assert other is not None
        path.write_bytes(other.file_bytes())
    expected = MissingDictionary if damage == "deleted" else DamagedDictionary

    with Storage(data_dir, read_only=True) as store:
        got, error = read_until_error(store)
        assert type(error) is expected
        assert (error.stream_id, error.offset) == (SID, first)
        assert error.dictionary == path
        assert error.segment is not None
        assert error.position is not None
        assert str(path) in str(error)
        assert error.hint is not None
        assert f"restore {path}" in error.hint
        assert got == events[: first - 2]  # everything before it was verified and returned
        # Reads that do not reach a dictionary record still work; those that do fail the same way.
        assert store.read_from(SID, 10, 1) == [events[10]]
        with pytest.raises(expected) as from_point_read:
            store.read_from(SID, 1400, 1)
        assert from_point_read.value.hint is not None
        assert f"restore {path}" in from_point_read.value.hint  # the point-read path keeps it too
        verdict = verify_store(store).streams[0]
        assert isinstance(verdict.error, expected)

        report = store.check()
        problem = FindingKind.MISSING_DICTIONARY if damage == "deleted" else FindingKind.DAMAGED_DICTIONARY
        (finding,) = [f for f in report.findings if f.problem == problem]
        assert (finding.stream_id, finding.offset, finding.repair) == (SID, first, RepairKind.ISOLATE)
        assert str(path) in finding.message
        assert "restore" in finding.message
        # The records are intact: the default repair cuts none of them. A file whose zstd dictionary
        # still decodes every record to its hash is rewritten; otherwise the plan says to restore it.
        (step,) = report.plan()
        if damage == "flipped byte":  # this byte is not one the records' decoding depends on
            assert step.effect.startswith(f"rewrites the damaged dictionary file {path.name}")
        else:
            assert step.effect.startswith(f"cuts nothing: the records from offset {first} are intact but need")

        path.write_bytes(original)  # restored from a backup: readable again, no reopen needed
        assert genesis_events(store, SID) == events
        assert store.check().ok


@pytest.mark.parametrize("where", ["digest", "header"])
def test_a_dictionary_damaged_outside_its_content_is_resealed_and_no_record_is_cut(
    trained: tuple[Path, list[bytes], int], where: str
) -> None:
    """Issue 9, item 13: one bit of a dictionary file's digest (or header) flipped. The records that
    need it still decode with its content and verify, so repair rewrites the file correctly sealed
    (keeping the damaged one) and cuts nothing; every record reads back."""
    data_dir, events, number = trained
    path = dictionary_path(data_dir, SID, number)
    damaged = path.read_bytes()
    flip_byte(path, len(damaged) - 5 if where == "digest" else 9, 0x01)  # the digest, or the stream id field
    damaged = path.read_bytes()
    with Storage(data_dir) as store:
        with pytest.raises(DamagedDictionary):
            genesis_events(store, SID)
        (step,) = store.check().plan()
        assert step.repair == RepairKind.ISOLATE
        assert step.effect.startswith(f"rewrites the damaged dictionary file {path.name} with a correct digest")
        assert "cuts" not in step.effect
        report = store.repair()
        assert report.after is not None
        assert report.after.ok
        assert [e.action for e in report.entries if e.action == RecoveryAction.RESEALED_DICTIONARY] == [
            RecoveryAction.RESEALED_DICTIONARY
        ]
        assert genesis_events(store, SID) == events  # every record, none cut
        assert store.next_offset(SID) == len(stored_records(data_dir))
    kept = path.with_name(path.name + ".quarantine")
    assert kept.read_bytes() == damaged
    assert quarantine_files(data_dir, SID) == [kept]  # and no segment bytes were cut
    with Storage(data_dir, read_only=True) as reader:
        assert genesis_events(reader, SID) == events
        assert verify_store(reader).ok


def test_a_dictionary_whose_content_is_damaged_is_not_resealed(trained: tuple[Path, list[bytes], int]) -> None:
    """A flipped byte in the zstd dictionary's own id: no dictionary the records name is in the file,
    so nothing is rewritten or cut; the plan says to restore the file."""
    data_dir, _, number = trained
    path = dictionary_path(data_dir, SID, number)
    flip_byte(path, DICTIONARY_HEADER.size + 4)  # after the zstd dictionary magic: its id
    before = path.read_bytes()
    with Storage(data_dir) as store:
        (step,) = store.check().plan()
        assert "rewrites" not in step.effect
        assert step.effect.startswith("cuts nothing")
        store.repair([step])
        with pytest.raises(DamagedDictionary):
            genesis_events(store, SID)
    assert path.read_bytes() == before
    assert quarantine_files(data_dir, SID) == []


def test_a_forged_dictionary_that_passes_the_file_checks_is_caught_by_the_record_hash(
    trained: tuple[Path, list[bytes], int],
) -> None:
    """Same stream and number, valid digest, other content: no wrong payload is ever returned."""
    data_dir, events, number = trained
    forged = train_dictionary(SID, number, json_events(1000, seed=11))
    assert forged is not None
    dictionary_path(data_dir, SID, number).write_bytes(forged.file_bytes())
    first = first_dictionary_record(data_dir)
    with Storage(data_dir, read_only=True) as store:
        got, error = read_until_error(store)
    assert isinstance(error, HashMismatch | ChecksumMismatch)
    assert (error.stream_id, error.offset) == (SID, first)
    assert got == events[: first - 2]


def test_the_cli_check_names_a_missing_dictionary(trained: tuple[Path, list[bytes], int]) -> None:
    from click.testing import CliRunner

    from hybridlog.cli import cli

    data_dir, _, number = trained
    path = dictionary_path(data_dir, SID, number)
    path.unlink()
    result = CliRunner().invoke(cli, ["check", str(data_dir)])
    assert result.exit_code == 3
    line = next(line for line in result.stdout.splitlines() if FindingKind.MISSING_DICTIONARY in line)
    assert str(path) in line
    assert "Traceback" not in result.stdout + result.stderr


def test_a_writer_never_reuses_the_number_of_a_missing_dictionary(trained: tuple[Path, list[bytes], int]) -> None:
    """The file is gone; the next dictionary gets a higher number, and the old records still name theirs."""
    data_dir, events, number = trained
    path = dictionary_path(data_dir, SID, number)
    original = path.read_bytes()
    path.unlink()
    more = json_events(1100, seed=12)
    with open_writer(data_dir) as store:
        append_in_batches(store, SID, more)
        (newer,) = dictionary_files(data_dir)
        assert int(newer.stem) > number
        with pytest.raises(MissingDictionary) as caught:
            genesis_events(store, SID)
        assert caught.value.dictionary == path
        path.write_bytes(original)
        assert genesis_events(store, SID) == events + more


def test_a_damaged_newest_dictionary_is_not_used_for_new_records(trained: tuple[Path, list[bytes], int]) -> None:
    data_dir, events, number = trained
    path = dictionary_path(data_dir, SID, number)
    original = path.read_bytes()
    flip_byte(path, 40)
    more = json_events(200, seed=13)
    with open_writer(data_dir) as store:
        start = store.next_offset(SID)
        append_in_batches(store, SID, more)
    new = [r for r in stored_records(data_dir) if r[0] >= start]
    assert any(flags & FLAG_COMPRESSED for _, flags, _, _ in new)
    assert not any(flags & FLAG_DICTIONARY for _, flags, _, _ in new)
    path.write_bytes(original)
    with Storage(data_dir, read_only=True) as store:
        assert genesis_events(store, SID) == events + more


# --- crashes ---------------------------------------------------------------------------------------


def test_a_writer_killed_after_writing_a_dictionary_before_using_it_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL right after the dictionary file is durable: every acknowledged batch is there, and the
    next writer compresses with that dictionary."""
    data_dir = tmp_path / "store"
    lines = run_until_killed(THIS_FILE, "die-after-dictionary", str(data_dir), plan=None)
    acks = [(int(a), bytes.fromhex(b)) for a, b in (line.split(" ") for line in lines)]
    assert acks, "the child acknowledged nothing"
    (dictionary,) = dictionary_files(data_dir)
    events = child_events()
    assert not any(flags & FLAG_DICTIONARY for _, flags, _, _ in stored_records(data_dir))

    with open_writer(data_dir) as store:
        assert store.damaged_streams() == {}
        got = genesis_records(store, SID)
        # The acknowledged batches, and possibly the one whose append trained the dictionary.
        assert events_of(got) in (events[: 100 * len(acks)], events[: 100 * (len(acks) + 1)])
        for next_offset, head in acks:
            assert got[next_offset - 1].hash == head
        more = json_events(100, seed=14)
        store.append(SID, more)
        assert events_of(genesis_records(store, SID))[-100:] == more
        assert store.check().ok
    used = {used for _, _, used, _ in stored_records(data_dir) if used is not None}
    assert used == {int(dictionary.stem)}


def child_events() -> list[bytes]:
    return json_events(1500, seed=15)


def child_die_after_dictionary(data_dir: Path) -> None:
    """Append batches of 100 with fsync, print each acknowledgement, and SIGKILL this process as soon
    as the dictionary file has been written durably (before any record could use it)."""
    import hybridlog.training as training

    write = getattr(training, "write_file_durably")  # noqa: B009 (not an exported name)

    def write_then_die(path: Path, data: bytes) -> None:
        write(path, data)
        kill_self()

    setattr(training, "write_file_durably", write_then_die)  # noqa: B010 (not an exported name)
    store = open_writer(data_dir, clock=None)
    events = child_events()
    for start in range(0, len(events), 100):
        next_offset, head = store.append(SID, events[start : start + 100], fsync=True)
        print(next_offset, head.hex(), flush=True)
    store.close()


KILLED_STREAMS = 3


def killed_stream(round_no: int) -> int:
    return round_no % KILLED_STREAMS


def run_killed_child(data_dir: Path, round_no: int, plan: KillPlan) -> list[tuple[int, bytes]]:
    """Run a child appending batches of 50 with fsync to ``killed_stream(round_no)`` until it kills
    itself where ``plan`` says (a failpoint in its Nth append, or right after its Nth acknowledgement).

    Returns its acknowledgements: (next offset, head) per batch, as printed after ``append`` returned.
    """
    lines = run_until_killed(THIS_FILE, "append", str(data_dir), str(round_no), plan=plan)
    assert lines[0] == "ready"
    acks = [(int(a), bytes.fromhex(b)) for a, b in (line.split(" ") for line in lines[1:])]
    assert len(acks) == plan.acknowledged, f"{plan}: {len(acks)} acknowledgements"
    return acks


def child_batch(round_no: int, batch_no: int) -> list[bytes]:
    """The events of the killed child's batch ``batch_no`` in round ``round_no``."""
    return json_events(50, seed=100 + round_no, start=50 * batch_no)


def child_append(data_dir: Path, round_no: int) -> None:
    """Append batches of 50 events with fsync until killed as planned."""
    arm_from_environment()
    store = open_writer(data_dir, clock=None, checkpoint_policy=CheckpointPolicy.every(500, on_close=False))
    print("ready", flush=True)
    for batch_no in range(100_000):
        next_offset, head = store.append(killed_stream(round_no), child_batch(round_no, batch_no), fsync=True)
        acknowledge(f"{next_offset} {head.hex()}")
    store.close()


def test_writers_killed_around_dictionary_training_lose_nothing_acknowledged(tmp_path: Path) -> None:
    """Writers SIGKILLed at a seeded failpoint in their Nth append or after their Nth acknowledgement
    (N seeded), before and after training a dictionary, round after round on one store (three
    streams, one per round in turn): every acknowledged batch reads back (the batch in flight
    exactly when its bytes were written), check() finds nothing, and appends continue. (A kill inside
    training, at a named step, is the test above.)"""
    data_dir = tmp_path / "store"
    rng = random.Random(21)
    known: dict[int, list[bytes]] = {sid: [] for sid in range(KILLED_STREAMS)}  # events known to be stored
    heads: dict[int, list[tuple[int, bytes]]] = {sid: [] for sid in range(KILLED_STREAMS)}
    policy = CheckpointPolicy.every(500, on_close=False)
    for round_no in range(9):
        sid = killed_stream(round_no)
        plan = KillPlan.choose(rng, 4, 29)
        acks = run_killed_child(data_dir, round_no, plan)
        events = [e for batch_no in range(len(acks) + 1) for e in child_batch(round_no, batch_no)]
        with open_writer(data_dir, checkpoint_policy=policy) as store:
            assert store.damaged_streams() == {}
            records = genesis_records(store, sid)
            got = events_of(records)
            acked, in_flight = events[: 50 * len(acks)], events[: 50 * (len(acks) + 1)]
            assert got == known[sid] + (in_flight if plan.in_flight_lands else acked), f"round {round_no}, {plan}"
            heads[sid].extend(acks)
            for next_offset, head in heads[sid]:
                assert records[next_offset - 1].hash == head
            assert store.check().findings == []
            extra = [f"parent after round {round_no}".encode()]
            heads[sid].append(store.append(sid, extra))
            known[sid] = got + extra
    with Storage(data_dir, read_only=True) as reader:
        for sid in range(KILLED_STREAMS):
            assert genesis_events(reader, sid) == known[sid]
    assert any(dictionary_files(data_dir, sid) for sid in range(KILLED_STREAMS)), "no round trained a dictionary"


def store_with_unadopted_tail(
    tmp_path: Path, tail_batches: list[list[bytes]], committed: int = 1100
) -> tuple[Path, Path, list[bytes]]:
    """A store whose segments hold dictionary-compressed batches the catalog never committed.

    ``committed`` events come first (the dictionary is trained after 1,000 of them). Returns the
    store directory, the dictionary file and every event in the segments.
    """
    data_dir = tmp_path / "store"
    events = json_events(committed, seed=16)
    with open_writer(data_dir, max_segment_size=1024 * 1024) as store:
        append_in_batches(store, SID, events)
    saved = save_catalog(data_dir, tmp_path / "catalog.saved")
    policy = CheckpointPolicy.every(500, on_close=False)  # so the tail batches end the file
    with open_writer(data_dir, max_segment_size=1024 * 1024, checkpoint_policy=policy) as store:
        for batch in tail_batches:
            store.append(SID, batch)
    rollback_catalog(data_dir, saved)  # as if the writer died before these catalog commits
    (dictionary,) = dictionary_files(data_dir)
    return data_dir, dictionary, events + [e for batch in tail_batches for e in batch]


@pytest.mark.parametrize("tail", ["several batches", "one record ending the file"])
def test_records_past_the_catalog_needing_a_missing_dictionary_are_damage_not_a_torn_tail(
    tmp_path: Path, tail: str
) -> None:
    batches = (
        [json_events(30, seed=17, start=i * 30) for i in range(3)] if tail == "several batches" else [[b"x" * 300]]
    )
    data_dir, dictionary, everything = store_with_unadopted_tail(tmp_path, batches)
    segment = segment_path(data_dir, SID, 0)
    before = segment.read_bytes()
    tail_start = 1103  # 1,100 events, 3 checkpoints (after 500, 1,000 and on close)
    unadopted = [r for r in stored_records(data_dir) if r[0] >= tail_start]
    assert len(unadopted) == sum(map(len, batches))
    assert all(flags & FLAG_DICTIONARY for _, flags, _, _ in unadopted)
    original = dictionary.read_bytes()
    dictionary.unlink()

    with open_writer(data_dir, max_segment_size=1024 * 1024) as store:
        damage = store.damaged_streams()[StreamId(SID)]
        assert isinstance(damage, MissingDictionary)
        assert damage.dictionary == dictionary
        assert (damage.stream_id, damage.offset) == (SID, tail_start)  # the first record past the catalog's end
        with pytest.raises(StorageError):
            store.append(SID, [b"refused until repaired"])
        report = store.check()
        assert FindingKind.MISSING_DICTIONARY in {f.problem for f in report.findings}
    assert segment.read_bytes() == before  # nothing was cut
    assert quarantine_files(data_dir, SID) == []

    dictionary.write_bytes(original)
    with open_writer(data_dir, max_segment_size=1024 * 1024) as store:
        assert store.damaged_streams() == {}
        assert genesis_events(store, SID) == everything
        assert store.check().ok


def test_a_catalog_rebuilt_while_a_dictionary_is_missing_cuts_nothing(tmp_path: Path) -> None:
    """Rebuilding indexes up to the first record needing the missing file, reports it, and cuts nothing,
    even when that record is the last in the file; with the file back, the next writer adopts it."""
    data_dir, dictionary, everything = store_with_unadopted_tail(tmp_path, [[b"x" * 300]], committed=1000)
    original = dictionary.read_bytes()
    dictionary.unlink()
    delete_catalog(data_dir)
    before = segment_path(data_dir, SID, 0).read_bytes()
    first = first_dictionary_record(data_dir)
    assert [r[0] for r in stored_records(data_dir)][-1] == first  # the only one, and the last

    with open_writer(data_dir, max_segment_size=1024 * 1024) as store:
        damage = store.damaged_streams()[StreamId(SID)]
        assert isinstance(damage, MissingDictionary)
        assert damage.offset == first
        assert store.next_offset(SID) == first
        assert genesis_events(store, SID) == everything[: first - 2]
    assert segment_path(data_dir, SID, 0).read_bytes() == before
    assert quarantine_files(data_dir, SID) == []

    dictionary.write_bytes(original)
    with open_writer(data_dir, max_segment_size=1024 * 1024) as store:
        assert store.damaged_streams() == {}
        assert genesis_events(store, SID) == everything
        assert store.check().ok


if __name__ == "__main__":
    if sys.argv[1] == "die-after-dictionary":
        child_die_after_dictionary(Path(sys.argv[2]))
    else:
        assert sys.argv[1] == "append"
        child_append(Path(sys.argv[2]), int(sys.argv[3]))
