"""Training each stream a zstd dictionary from its own payloads, and which one new records use.

With ``compression=ZSTD`` the writer keeps, per stream, samples of the event payloads it appends
(in memory only: a restarted writer collects again). Once a stream has ``TRAIN_AFTER_SAMPLES``
samples or ``TRAIN_AFTER_BYTES`` of them, the appending thread that brought it there trains a
``DICTIONARY_SIZE`` dictionary (after its own batch is committed, so training never makes a batch
fail), checks that it pays, and publishes it:

1. the ``.zdict`` file is written durably (temp file, fsync, rename, fsync the directory);
2. only then do new batches of the stream get framed with it (flag bit 2 on their records).

So no record on disk ever names a dictionary whose file is not durable; a crash between 1 and 2
leaves a dictionary no record uses yet, which the next writer picks up. When a stream is first
appended to in a writer session, its newest (highest-numbered) dictionary file is loaded and used
for new records; if that file is damaged it is left alone and records go plain zstd until the next
dictionary is trained.

A dictionary's number is the stream's next offset when it was trained, so every record compressed
with it comes after that offset. Numbering by offset rather than counting files means a number is
never used twice, even when a dictionary file has gone missing: the next one gets a higher number,
and the records that need the missing one keep naming it. (No file is ever overwritten either.)
A stream past ``MAX_DICTIONARY_NO`` records trains no new dictionary.

Why these numbers (measured on the benchmark's 256-byte JSON events, ``scripts/bench.py``): plain
zstd stores them at about 1.25x; a 16 KiB dictionary trained on 1,000 of them (256 KiB) stores
the next ones at about 3.2x (8 KiB: 3.15x, 32 KiB: 3.2x; 50 samples already give 3.05x), and
training takes about 20 ms. For 4 KiB events the same 256 KiB (64 samples) gives 4.7x against 3.0x
for plain zstd. Payloads over ``MAX_SAMPLE_SIZE`` are not sampled: big payloads compress well
alone. Samples of all streams together are capped at ``SAMPLE_BUDGET``: a stream that finds the
budget full samples nothing until another trains, or until the stream that sampled least recently
has been idle for ``IDLE_SECONDS`` and gives up its samples.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from hybridlog.dictionary import DictionaryCache, DictionaryUnavailable, StreamDictionary, load_dictionary
from hybridlog.layout import dictionary_numbers_on_disk, dictionary_path, stream_path
from hybridlog.record import (
    COMPRESSION_LEVEL,
    MAX_DICTIONARY_NO,
    choose_stored,
    dictionary_compressor,
    dictionary_id,
    new_compressor,
)
from hybridlog.segment import write_file_durably

log = logging.getLogger(__name__)

TRAIN_AFTER_SAMPLES = 1000
TRAIN_AFTER_BYTES = 256 * 1024
MAX_SAMPLE_SIZE = 16 * 1024
DICTIONARY_SIZE = 16 * 1024
SAMPLE_BUDGET = 32 * 1024 * 1024
IDLE_SECONDS = 60.0
MIN_SAVING = 0.10
"""A dictionary is used only if it stores held-out samples at least this much smaller than plain zstd."""
HOLD_OUT_EVERY = 5
"""Every 5th sample is held out of training, to judge the dictionary on payloads it has not seen."""


class _Phase(enum.Enum):
    COLLECTING = "collecting"
    TRAINING = "training"
    SETTLED = "settled"  # has its dictionary for this session, or training did not pay


@dataclass(slots=True)
class _StreamState:
    dictionary: StreamDictionary | None
    phase: _Phase
    samples: list[bytes] = field(default_factory=list)
    sample_bytes: int = 0
    last_sampled: float = 0.0


def train_dictionary(stream_id: int, number: int, samples: Sequence[bytes]) -> StreamDictionary | None:
    """A dictionary trained on ``samples``, or None when zstd cannot train one or it does not pay.

    Judged on held-out samples: it must store them at least ``MIN_SAVING`` smaller than plain
    zstd does (both under the store's rule of keeping a compressed form only when it is smaller).
    """
    held_out = list(samples[::HOLD_OUT_EVERY])
    training: list[bytes | bytearray | memoryview] = [s for i, s in enumerate(samples) if i % HOLD_OUT_EVERY]
    try:
        trained = zstandard.train_dictionary(
            DICTIONARY_SIZE, training, dict_id=dictionary_id(number), level=COMPRESSION_LEVEL
        )
    except zstandard.ZstdError as e:
        log.info("stream %d: no dictionary trained from %d samples (%s)", stream_id, len(training), e)
        return None
    dictionary = StreamDictionary(stream_id, number, trained.as_bytes())
    plain, with_dictionary = new_compressor(), dictionary_compressor(dictionary.zstd)
    plain_size = sum(len(choose_stored(s, plain)[0]) for s in held_out)
    dictionary_size = sum(len(choose_stored(s, with_dictionary)[0]) for s in held_out)
    if dictionary_size > plain_size * (1 - MIN_SAVING):
        log.info(
            "stream %d: a trained dictionary stores samples in %d bytes against %d without; not used",
            stream_id,
            dictionary_size,
            plain_size,
        )
        return None
    return dictionary


class DictionaryTrainer:
    """The writer's per-stream dictionaries: which one new records use, and samples toward training one.

    Safe to call from any appending thread. ``cache`` is the store's reading cache: a published
    dictionary is put there, so reads do not load the file again.
    """

    def __init__(
        self,
        data_dir: Path,
        cache: DictionaryCache,
        *,
        sample_budget: int = SAMPLE_BUDGET,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._data_dir = data_dir
        self._cache = cache
        self._budget = sample_budget
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._streams: dict[int, _StreamState] = {}
        self._sampled_bytes = 0

    def dictionary(self, stream_id: int) -> StreamDictionary | None:
        """The dictionary new records of the stream are compressed with (None: plain zstd)."""
        state = self._streams.get(stream_id)
        if state is None:
            with self._lock:
                state = self._state(stream_id)
        return state.dictionary

    def observe(self, stream_id: int, payloads: Sequence[bytes | bytearray | memoryview], next_offset: int) -> None:
        """Sample a committed batch's payloads; train and publish a dictionary when there are enough.

        ``next_offset``: the stream's next offset after that batch (the number a dictionary trained
        now gets). Never raises: a failure to train or to write the file is logged, and the stream
        stays on plain zstd for the rest of this session.
        """
        state = self._streams.get(stream_id)
        if state is not None and state.phase is not _Phase.COLLECTING:
            return  # the common case once a stream has its dictionary: no lock taken
        try:
            samples = self._collect(stream_id, payloads)
            if samples is not None:
                self._train_and_publish(stream_id, next_offset, samples)
        except Exception:
            log.exception("stream %d: dictionary training failed; staying with plain zstd", stream_id)
            with self._lock:
                self._settle(self._state(stream_id))

    def _state(self, stream_id: int) -> _StreamState:
        """The stream's state (the lock held), loading its newest dictionary file on first use."""
        state = self._streams.get(stream_id)
        if state is not None:
            return state
        numbers = dictionary_numbers_on_disk(stream_path(self._data_dir, stream_id))
        dictionary = None
        if numbers:
            try:
                dictionary = load_dictionary(self._data_dir, stream_id, numbers[-1])
            except DictionaryUnavailable as e:
                log.warning("stream %d: %s; new records will not use it", stream_id, e.reason)
            else:
                self._cache.remember(dictionary)
        state = _StreamState(dictionary, _Phase.SETTLED if dictionary is not None else _Phase.COLLECTING)
        self._streams[stream_id] = state
        return state

    def _collect(self, stream_id: int, payloads: Sequence[bytes | bytearray | memoryview]) -> list[bytes] | None:
        """Add samples; returns them all (and starts training) once the stream has enough."""
        with self._lock:
            state = self._state(stream_id)
            if state.phase is not _Phase.COLLECTING:
                return None
            for payload in payloads:
                size = len(payload)
                if not 0 < size <= MAX_SAMPLE_SIZE:
                    continue
                if self._sampled_bytes + size > self._budget and not self._make_room(size, state):
                    break
                state.samples.append(bytes(payload))
                state.sample_bytes += size
                self._sampled_bytes += size
            state.last_sampled = self._monotonic()
            if len(state.samples) < TRAIN_AFTER_SAMPLES and state.sample_bytes < TRAIN_AFTER_BYTES:
                return None
            samples = state.samples
            self._drop_samples(state)
            state.phase = _Phase.TRAINING
            return samples

    def _make_room(self, size: int, for_state: _StreamState) -> bool:
        """Drop the samples of streams idle for IDLE_SECONDS (least recent first) until ``size`` fits."""
        now = self._monotonic()
        idle = sorted(
            (s for s in self._streams.values() if s is not for_state and s.samples),
            key=lambda s: s.last_sampled,
        )
        for other in idle:
            if self._sampled_bytes + size <= self._budget or now - other.last_sampled < IDLE_SECONDS:
                break
            self._drop_samples(other)
        return self._sampled_bytes + size <= self._budget

    def _drop_samples(self, state: _StreamState) -> None:
        self._sampled_bytes -= state.sample_bytes
        state.samples, state.sample_bytes = [], 0

    def _settle(self, state: _StreamState) -> None:
        self._drop_samples(state)
        state.phase = _Phase.SETTLED

    def _train_and_publish(self, stream_id: int, number: int, samples: list[bytes]) -> None:
        """Train (outside the lock: appends go on meanwhile), write the file durably, then use it."""
        dictionary = train_dictionary(stream_id, number, samples) if number <= MAX_DICTIONARY_NO else None
        if dictionary is not None:
            path = dictionary_path(self._data_dir, stream_id, number)
            if path.exists():  # never replace a dictionary that records may use
                raise FileExistsError(f"{path} already exists")
            # Durable (temp file, fsync, rename, fsync the directory) before any record uses it.
            write_file_durably(path, dictionary.file_bytes())
            self._cache.remember(dictionary)
            log.info("stream %d: dictionary %s in use (%d bytes)", stream_id, path.name, len(dictionary.data))
        with self._lock:
            state = self._streams[stream_id]
            if dictionary is not None:
                state.dictionary = dictionary
            self._settle(state)
