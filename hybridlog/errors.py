"""The exception tree. Every error the library raises on purpose is a ``StorageError``.

Errors about bad arguments also subclass the matching built-in (``ValueError`` or ``TypeError``)
so ordinary Python code can catch them either way. Errors about stored data carry where the
problem is (stream, offset, segment file, byte position) and a hint naming the command that fixes
it. Driver errors (``apsw.Error``, ``OSError``) are translated where they are raised, with
``raise ... from``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TypedDict


class StorageError(Exception):
    """Raised when the store cannot do what was asked; the root of every hybridlog error."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


# --- bad arguments -------------------------------------------------------------------------------


class InvalidArgument(StorageError, ValueError):
    """Raised when an argument is out of range; nothing was written."""


class InvalidStreamId(InvalidArgument, TypeError):
    """Raised when a stream id is not an int in 0..2**63-1 (bool, negative, float, str...)."""


class EmptyBatch(InvalidArgument):
    """Raised when ``append_batch`` is given no events."""


class InvalidEvent(StorageError, TypeError):
    """Raised when an event is not bytes-like."""


class EventTooLarge(InvalidArgument):
    """Raised when an event is bigger than ``MAX_EVENT_SIZE``."""


# --- optimistic concurrency ----------------------------------------------------------------------


class ConflictError(StorageError):
    """Raised when the caller's view of a stream's head is not the stream's head; nothing written."""

    def __init__(self, message: str, *, stream_id: int) -> None:
        super().__init__(message, hint="re-read the head with latest_chain_hash() and retry")
        self.stream_id = stream_id


class OffsetMismatch(ConflictError):
    """Raised when ``expected_offset`` is not the stream's next offset."""

    def __init__(self, *, stream_id: int, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream_id}: expected_offset {expected} but the next offset is {actual}",
            stream_id=stream_id,
        )
        self.expected = expected
        self.actual = actual


class ChainMismatch(ConflictError):
    """Raised when ``prev_hash`` is not the stream's chain head (``None`` only fits an empty stream)."""

    def __init__(self, *, stream_id: int, given: bytes | None, head: bytes | None) -> None:
        def show(h: bytes | None) -> str:
            return "None" if h is None else h.hex()

        super().__init__(
            f"stream {stream_id}: prev_hash {show(given)} is not the chain head {show(head)}",
            stream_id=stream_id,
        )
        self.given = given
        self.head = head


class RecordCountMismatch(ConflictError):
    """Raised when ``create_checkpoint`` is given a ``record_count`` other than the stream's."""

    def __init__(self, *, stream_id: int, given: int, actual: int) -> None:
        super().__init__(
            f"stream {stream_id}: record_count {given} but the stream holds {actual} records",
            stream_id=stream_id,
        )
        self.given = given
        self.actual = actual


# --- the store as a whole ------------------------------------------------------------------------


class StorageLocked(StorageError):
    """Raised when another writer holds the store's lock."""

    def __init__(self, path: Path, holder_pid: int | None) -> None:
        who = f"process {holder_pid}" if holder_pid else "another process"
        super().__init__(
            f"store {path.parent} is locked for writing by {who} ({path})",
            hint="open it with read_only=True, or stop the other writer",
        )
        self.path = path
        self.holder_pid = holder_pid


class LockLost(StorageError):
    """Raised when a writer's ``LOCK`` file was deleted or replaced while it held the store.

    The writer writes nothing more (every later write raises this too); it still holds the lock on
    the store directory, so no other writer can open the store until it is closed. Reads work.
    Close the store and open it again: that creates a new ``LOCK``.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"the writer lock {path} {reason} while this process held the store; it writes nothing more",
            hint="find out who removed or replaced it, then close the store and open it again",
        )
        self.path = path
        self.reason = reason


class ReadOnlyStore(StorageError):
    """Raised when a store opened with ``read_only=True`` is asked to write."""


class StoreClosed(StorageError):
    """Raised when a closed store is used."""


class StorageIOError(StorageError):
    """Raised when the operating system refuses a file operation (disk full, permissions...)."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def os_error_detail(error: OSError) -> str:
    """An OSError in words with its errno's name, e.g. "No space left on device [ENOSPC]: /s/LOCK"."""
    name = errno.errorcode.get(error.errno or 0, str(error.errno))
    text = f"{error.strerror or error} [{name}]"
    return f"{text}: {error.filename}" if error.filename else text


class AppendOutcomeUnknown(StorageIOError):
    """Raised when an append failed at a point where its batch may or may not be stored: the
    catalog commit itself failed (it may have happened), or a failed write could not be cut back
    (its bytes may be complete, and recovery then adopts them). ``stream_id`` and the offsets
    ``first_offset`` up to (not including) ``next_offset`` say which batch.

    The stream refuses every further append (StorageIOError) until the store is opened again.
    Reopen it (recovery decides: the batch is then wholly there or wholly absent), read the stream
    from ``first_offset``, and append the batch again only if its records are not there.
    """

    def __init__(
        self, message: str, *, stream_id: int, first_offset: int, next_offset: int, path: Path | None = None
    ) -> None:
        super().__init__(message, path=path)
        self.hint = (
            f"close and reopen the store, then read stream {stream_id} from offset {first_offset}:"
            " append the batch again only if its records are not there"
        )
        self.stream_id = stream_id
        self.first_offset = first_offset
        self.next_offset = next_offset


class InvalidConfiguration(InvalidArgument):
    """Raised when a ``Storage`` option is out of range (for example a tiny ``max_segment_size``)."""


# --- the catalog ---------------------------------------------------------------------------------


class CatalogError(StorageError):
    """Raised when the SQLite catalog cannot be opened or used."""


class CatalogUnusable(CatalogError):
    """Raised when the catalog file is not a usable SQLite database (a writer rebuilds it)."""


class CatalogBusy(CatalogError):
    """Raised when another process keeps the catalog locked for longer than the store's
    ``busy_timeout`` (an ``sqlite3`` shell with ``PRAGMA locking_mode=EXCLUSIVE``, a long
    transaction). Nothing was changed: a busy catalog is never rebuilt."""

    def __init__(self, path: Path, *, waited_s: float, detail: str) -> None:
        super().__init__(
            f"catalog {path} is busy: another process holds it locked ({detail}); gave up after {waited_s:g} s",
            hint="stop the other program using it (an sqlite3 shell, a backup tool) and try again,"
            " or open the store with a longer busy_timeout",
        )
        self.path = path
        self.waited_s = waited_s


class CatalogIOError(CatalogError, StorageIOError):
    """Raised when the operating system fails an operation on the catalog's files (disk full, an
    I/O error, a name that is not a regular file). Nothing was changed: the catalog is not rebuilt
    for it, since its contents were never shown to be bad."""

    def __init__(self, message: str, *, path: Path, hint: str | None = None) -> None:
        StorageIOError.__init__(self, message, path=path)
        if hint is not None:
            self.hint = hint


class CatalogPermissionDenied(CatalogIOError):
    """Raised when this process may not read or write the catalog (``path``: the file, its
    ``-wal``/``-shm`` companion, or the store directory it must create them in). Nothing was
    changed: an unreadable catalog is never rebuilt."""

    def __init__(self, path: Path, *, needs: str, detail: str) -> None:
        super().__init__(
            f"permission denied: this process (uid {os.geteuid()}) may not {needs} {path} ({detail})",
            path=path,
            hint=f"give this user {needs} access to {path}, or run as the store's owner",
        )


class CatalogTooNew(CatalogError):
    """Raised when the catalog's schema version is newer than this code knows."""

    def __init__(self, path: Path, found: int, known: int) -> None:
        super().__init__(
            f"catalog {path} has schema version {found}; this hybridlog knows up to {known}",
            hint="upgrade hybridlog",
        )
        self.path = path
        self.found = found
        self.known = known


class RecordFormatTooNew(CatalogTooNew):
    """Raised when the catalog says the store's records are in a newer format than this code reads
    (``store_info.record_format_version``): a newer hybridlog wrote the store. Nothing was read or
    changed, and the catalog is not rebuilt. ``found`` and ``known`` are record format versions."""

    def __init__(self, path: Path, found: int, known: int) -> None:
        super().__init__(path, found, known)
        self.message = f"catalog {path} says its records are in format {found}; this hybridlog reads format {known}"
        self.args = (self.message,)


# --- consumers -----------------------------------------------------------------------------------


class ConsumerError(StorageError):
    """Raised when ``consumers.db`` (named consumers' positions) cannot be opened or written."""


class UnknownConsumer(InvalidArgument):
    """Raised when ``ack`` names a consumer that was never registered (by ``subscribe(consumer=...)``
    or ``register_consumer``); nothing was written."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no consumer named {name!r}",
            hint="subscribe with consumer=NAME, or call register_consumer(NAME), before acknowledging",
        )
        self.name = name


class ConsumerMismatch(InvalidArgument):
    """Raised when a consumer is subscribed or registered for other streams than the ones it follows
    (its position says what it has done in those streams only); nothing was written."""

    def __init__(self, name: str, follows: int | None, asked: int | None) -> None:
        def show(stream_id: int | None) -> str:
            return "every stream" if stream_id is None else f"stream {stream_id}"

        super().__init__(
            f"consumer {name!r} follows {show(follows)}, not {show(asked)}",
            hint="use another consumer name for another subscription",
        )
        self.name = name
        self.follows = follows
        self.asked = asked


class ConsumerPositionLost(StorageError):
    """Raised when a consumer's stored position no longer names the record it acknowledged: a full
    catalog rebuild renumbered the global positions, or a power loss took catalog commits whose
    positions were then given to other records. Resuming there could skip or repeat records, so
    nothing is read; choose the restart point (``from_position`` / ``from_offset``, then
    ``ack(name, position, force=True)``)."""

    def __init__(self, name: str | None, position: int, reason: str) -> None:
        super().__init__(
            f"{'subscription' if name is None else f'consumer {name!r}'}: position {position} {reason}",
            hint="subscribe with from_position or from_offset to choose where to resume, "
            "then move the consumer there with ack(name, position, force=True)",
        )
        self.name = name
        self.position = position


# --- SQL -----------------------------------------------------------------------------------------


class MultipleStatements(InvalidArgument):
    """Raised when a SQL query holds more than one statement; none of them ran."""


class QueryLimitExceeded(StorageError):
    """Raised when a SQL query goes past a limit its caller set (``timeout`` or ``max_rows``); the
    query is stopped and its connection closed. ``limit`` names which (``"timeout"`` or
    ``"max_rows"``) and ``value`` is the limit that was set."""

    def __init__(self, message: str, *, limit: str, value: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.limit = limit
        self.value = value


class QueryTimeout(QueryLimitExceeded):
    """Raised when a SQL query runs longer than its ``timeout`` (seconds spent running the query,
    not the caller's time between rows)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            f"the query ran longer than its timeout of {timeout:g} seconds and was stopped",
            limit="timeout",
            value=timeout,
            hint="narrow the query (a WHERE on stream_id, offset, timestamp or global_position), or raise the timeout"
            " (`timeout=`, `--timeout`)",
        )


class QueryRowLimit(QueryLimitExceeded):
    """Raised when a SQL query returns more rows than its ``max_rows``; the rows up to the limit
    were produced, the rest never are."""

    def __init__(self, max_rows: int) -> None:
        super().__init__(
            f"the query returned more than {max_rows} rows (max_rows) and was stopped",
            limit="max_rows",
            value=max_rows,
            hint="add a LIMIT or narrow the query, or raise the limit (`max_rows=`, `--max-rows`)",
        )


# --- stored data ---------------------------------------------------------------------------------


class Where(TypedDict):
    """Where in a store a problem is; the keyword arguments of IntegrityError."""

    stream_id: int | None
    offset: int | None
    segment: Path | None
    position: int | None


class IntegrityError(StorageError):
    """Raised when stored data fails verification: a checksum, a hash, a chain link or the head.

    ``stream_id``, ``offset``, ``segment`` (file path) and ``position`` (byte position of the record
    in that file) say where; any may be None when unknown.
    """

    hint = "run `hybridlog verify` to locate the damage, then `hybridlog repair`"

    def __init__(
        self,
        message: str,
        *,
        stream_id: int | None = None,
        offset: int | None = None,
        segment: Path | None = None,
        position: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = []
        if stream_id is not None:
            where.append(f"stream {stream_id}")
        if offset is not None:
            where.append(f"offset {offset}")
        if segment is not None:
            where.append(f"segment {segment}")
        if position is not None:
            where.append(f"byte {position}")
        super().__init__(f"{message} at {', '.join(where)}" if where else message, hint=hint)
        self.reason = message
        self.stream_id = stream_id
        self.offset = offset
        self.segment = segment
        self.position = position


class ChecksumMismatch(IntegrityError):
    """Raised when a record's bytes do not match its checksum (torn, overwritten or flipped)."""


class TruncatedRecord(IntegrityError):
    """Raised when a segment ends in the middle of a record the catalog says is complete."""


class HashMismatch(IntegrityError):
    """Raised when a record's stored hash is not the hash of its contents."""


class ChainBroken(IntegrityError):
    """Raised when a record's ``prev_hash`` is not the hash of the record before it."""


class CatalogMismatch(IntegrityError):
    """Raised when the catalog and the segments disagree (missing file, wrong position, head)."""


class DictionaryUnusable(IntegrityError):
    """Raised when a record compressed with its stream's dictionary cannot be decoded because that
    dictionary file (``dictionary``) is missing or damaged. The record itself may be intact:
    restoring the file from a backup makes it readable again.
    """

    def __init__(
        self,
        message: str,
        *,
        dictionary: Path,
        stream_id: int | None = None,
        offset: int | None = None,
        segment: Path | None = None,
        position: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, stream_id=stream_id, offset=offset, segment=segment, position=position, hint=hint)
        self.dictionary = dictionary


class MissingDictionary(DictionaryUnusable):
    """Raised when the dictionary file a dictionary-compressed record needs does not exist."""


class DamagedDictionary(DictionaryUnusable):
    """Raised when the dictionary file a record needs fails its digest, is not a dictionary file, or
    belongs to another stream or number.
    """


class RecordsUnavailable(IntegrityError):
    """Raised when a read reaches offsets a repair took out of the stream (``first_offset`` to
    ``next_offset - 1``); the stream goes on readable from ``next_offset``.
    """

    def __init__(
        self,
        message: str,
        *,
        first_offset: int,
        next_offset: int,
        stream_id: int | None = None,
        offset: int | None = None,
        segment: Path | None = None,
        position: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, stream_id=stream_id, offset=offset, segment=segment, position=position, hint=hint)
        self.first_offset = first_offset
        self.next_offset = next_offset


class RecordIsolated(RecordsUnavailable):
    """Raised when a read reaches a damaged record that repair isolated: its bytes are still in the
    segment but do not verify. The records before and after it read and verify as usual.
    """


class RecordsCut(RecordsUnavailable):
    """Raised when a read asks for offsets that repair cut from the stream (moved to quarantine):
    the stream's cut marker record stands in their place and links past them.
    """


# --- proofs and signed heads ---------------------------------------------------------------------


class ProofError(StorageError):
    """Raised when a Merkle proof, a signed note, a tree head or a receipt does not check out: a
    hash of the wrong length, an index outside the tree, a root the proof does not lead to, a note
    no trusted key signed, or a malformed key or note."""

    hint = "the proof or head does not match: the data, the proof or the key is not what it claims"


class HeadNotExtended(ProofError):
    """Raised when a store's tree is not an extension of a tree head it is checked against (the
    store was cut back or rewritten since the head was signed), or when a signer is asked to sign
    a head that does not extend the last one it signed. ``old_size`` is the head's size, ``size``
    the tree's."""

    hint = "the store no longer holds the history the head covers: run `hybridlog verify` and compare backups"

    def __init__(self, message: str, *, old_size: int, size: int) -> None:
        super().__init__(message)
        self.old_size = old_size
        self.size = size


# --- object stores (tiering) -----------------------------------------------------------------------


class ObjectStoreError(StorageError):
    """Raised when an object store (an S3 bucket, or a directory standing in for one) cannot do
    what was asked: unreachable, refused, misconfigured. Nothing the store holds locally changed."""


class ObjectMissing(ObjectStoreError):
    """Raised when an object that should be in the object store is not there."""


class ManifestError(ObjectStoreError):
    """Raised when a manifest is malformed, not signed by a trusted key, or does not follow on from
    the manifest before it."""


class WriterFenced(ObjectStoreError):
    """Raised when another writer has taken the stream over in the object store (a manifest with a
    higher writer epoch, or one that won the race for the next number with another epoch): this
    writer must stop publishing and appending."""

    hint = "another host writes this store now; open it read-only, or take it back over explicitly"


class RetainedBucket(ObjectStoreError):
    """Raised by ``Storage.open_remote`` for a bucket whose retention removed a stream's first
    records: a store's reads start at genesis. The records from the floor on are verified from the
    manifest's signed anchor by ``remote.verify_anchored`` (``hybridlog verify s3://...``)."""

    hint = "verify it with `hybridlog verify s3://...`, which starts each stream at its signed floor"


class BucketCutBack(IntegrityError):
    """Raised when an object store no longer holds a manifest it once showed (one given to check
    against): a tail cut, or a stream rewritten under another history."""

    hint = "the bucket lost or rewrote manifests: restore it from a copy, and find out who can write to it"
