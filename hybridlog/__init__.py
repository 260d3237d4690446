"""hybridlog: tamper-evident, append-only event streams in segment files with an SQLite catalog."""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from hybridlog.errors import (
    AppendOutcomeUnknown,
    CatalogBusy,
    CatalogError,
    CatalogIOError,
    CatalogMismatch,
    CatalogPermissionDenied,
    CatalogTooNew,
    CatalogUnusable,
    ChainBroken,
    ChainMismatch,
    ChecksumMismatch,
    ConflictError,
    ConsumerError,
    ConsumerMismatch,
    ConsumerPositionLost,
    DamagedDictionary,
    DictionaryUnusable,
    EmptyBatch,
    EventTooLarge,
    HashMismatch,
    HeadNotExtended,
    IntegrityError,
    InvalidArgument,
    InvalidConfiguration,
    InvalidEvent,
    InvalidStreamId,
    LockLost,
    MissingDictionary,
    MultipleStatements,
    OffsetMismatch,
    ProofError,
    QueryLimitExceeded,
    QueryRowLimit,
    QueryTimeout,
    ReadOnlyStore,
    RecordCountMismatch,
    RecordFormatTooNew,
    RecordIsolated,
    RecordsCut,
    RecordsUnavailable,
    StorageError,
    StorageIOError,
    StorageLocked,
    StoreClosed,
    TruncatedRecord,
    UnknownConsumer,
)

if TYPE_CHECKING:
    from hybridlog.backend import StorageBackend
    from hybridlog.catalog_rows import (
        CheckpointRow,
        IndexEntry,
        RecoveryEntry,
        StreamStats,
    )
    from hybridlog.consumers import ConsumerState
    from hybridlog.index import (
        CheckpointIndex,
        OffsetIndex,
        SegmentInfo,
    )
    from hybridlog.memory import MemoryStorage
    from hybridlog.pipeline import AppendPipeline
    from hybridlog.recovery import ReconcileResult
    from hybridlog.repair import (
        CheckReport,
        Finding,
        RepairReport,
        RepairStep,
    )
    from hybridlog.signing import HeadPublisher
    from hybridlog.sql import (
        QueryResult,
        QueryRows,
    )
    from hybridlog.storage import Storage
    from hybridlog.subscription import Subscription
    from hybridlog.tree import HeadSigner
    from hybridlog.types import (
        GENESIS_HASH,
        MAX_EVENT_SIZE,
        ChainHash,
        CheckpointPolicy,
        CompressionKind,
        FindingKind,
        GlobalPosition,
        GlobalRecord,
        MarkerAction,
        Offset,
        Record,
        RecordKind,
        RecoveryAction,
        RepairKind,
        StreamId,
    )
    from hybridlog.verify import (
        Disagreement,
        Disagreements,
        StreamVerdict,
        VerifyReport,
        verify_store,
    )

# Everything but the exception tree is imported on first use (PEP 562), so that the verifier
# modules (merkle, ed25519, note, tree_head, receipts), which need the standard library only, can
# be imported where apsw, blake3 and zstandard are not installed. The TYPE_CHECKING block above
# and this table name the same things (tests/test_public_names.py holds them to it).
_LAZY: dict[str, str] = {
    "StorageBackend": "hybridlog.backend",
    "CheckpointRow": "hybridlog.catalog_rows",
    "IndexEntry": "hybridlog.catalog_rows",
    "RecoveryEntry": "hybridlog.catalog_rows",
    "StreamStats": "hybridlog.catalog_rows",
    "ConsumerState": "hybridlog.consumers",
    "CheckpointIndex": "hybridlog.index",
    "OffsetIndex": "hybridlog.index",
    "SegmentInfo": "hybridlog.index",
    "MemoryStorage": "hybridlog.memory",
    "AppendPipeline": "hybridlog.pipeline",
    "ReconcileResult": "hybridlog.recovery",
    "CheckReport": "hybridlog.repair",
    "Finding": "hybridlog.repair",
    "RepairReport": "hybridlog.repair",
    "RepairStep": "hybridlog.repair",
    "HeadPublisher": "hybridlog.signing",
    "QueryResult": "hybridlog.sql",
    "QueryRows": "hybridlog.sql",
    "Storage": "hybridlog.storage",
    "Subscription": "hybridlog.subscription",
    "GENESIS_HASH": "hybridlog.types",
    "MAX_EVENT_SIZE": "hybridlog.types",
    "ChainHash": "hybridlog.types",
    "CheckpointPolicy": "hybridlog.types",
    "CompressionKind": "hybridlog.types",
    "FindingKind": "hybridlog.types",
    "GlobalPosition": "hybridlog.types",
    "GlobalRecord": "hybridlog.types",
    "MarkerAction": "hybridlog.types",
    "Offset": "hybridlog.types",
    "Record": "hybridlog.types",
    "RecordKind": "hybridlog.types",
    "RecoveryAction": "hybridlog.types",
    "RepairKind": "hybridlog.types",
    "StreamId": "hybridlog.types",
    "HeadSigner": "hybridlog.tree",
    "Disagreement": "hybridlog.verify",
    "Disagreements": "hybridlog.verify",
    "StreamVerdict": "hybridlog.verify",
    "VerifyReport": "hybridlog.verify",
    "verify_store": "hybridlog.verify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hybridlog' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


try:
    # The one source of the version is pyproject.toml, read back from the installed metadata.
    __version__ = version("hybridlog")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "HeadNotExtended",
    "ProofError",
    "AppendOutcomeUnknown",
    "GENESIS_HASH",
    "MAX_EVENT_SIZE",
    "AppendPipeline",
    "CatalogBusy",
    "CatalogError",
    "CatalogIOError",
    "CatalogMismatch",
    "CatalogPermissionDenied",
    "CatalogTooNew",
    "CatalogUnusable",
    "ChainBroken",
    "ChainHash",
    "ChainMismatch",
    "CheckpointIndex",
    "CheckpointPolicy",
    "CheckpointRow",
    "CheckReport",
    "ChecksumMismatch",
    "CompressionKind",
    "ConflictError",
    "ConsumerError",
    "ConsumerMismatch",
    "ConsumerPositionLost",
    "ConsumerState",
    "DamagedDictionary",
    "DictionaryUnusable",
    "Disagreement",
    "Disagreements",
    "EmptyBatch",
    "EventTooLarge",
    "Finding",
    "FindingKind",
    "GlobalPosition",
    "GlobalRecord",
    "HashMismatch",
    "HeadPublisher",
    "HeadSigner",
    "IndexEntry",
    "IntegrityError",
    "InvalidArgument",
    "InvalidConfiguration",
    "InvalidEvent",
    "InvalidStreamId",
    "LockLost",
    "MarkerAction",
    "MemoryStorage",
    "MissingDictionary",
    "MultipleStatements",
    "Offset",
    "OffsetIndex",
    "OffsetMismatch",
    "QueryLimitExceeded",
    "QueryResult",
    "QueryRowLimit",
    "QueryRows",
    "QueryTimeout",
    "ReadOnlyStore",
    "ReconcileResult",
    "Record",
    "RecordCountMismatch",
    "RecordFormatTooNew",
    "RecordIsolated",
    "RecordKind",
    "RecordsCut",
    "RecordsUnavailable",
    "RecoveryAction",
    "RecoveryEntry",
    "RepairKind",
    "RepairReport",
    "RepairStep",
    "SegmentInfo",
    "Storage",
    "StorageBackend",
    "StorageError",
    "StorageIOError",
    "StorageLocked",
    "StoreClosed",
    "StreamId",
    "StreamStats",
    "StreamVerdict",
    "Subscription",
    "TruncatedRecord",
    "UnknownConsumer",
    "VerifyReport",
    "verify_store",
]
