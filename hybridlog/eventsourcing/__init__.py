"""hybridlog as a persistence module of the ``eventsourcing`` library (``pip install 'hybridlog[eventsourcing]'``).

Select it with ``PERSISTENCE_MODULE=hybridlog.eventsourcing`` and ``HYBRIDLOG_STORE=<directory>``
(or ``<APPNAME>_HYBRIDLOG_STORE``). Every event an application records is a record of a hybridlog
stream, hash-chained and verifiable with ``hybridlog verify``; ``docs/eventsourcing.md`` says how
recorders map onto streams and what the index beside them holds.
"""

from hybridlog.eventsourcing.factory import HybridlogFactory
from hybridlog.eventsourcing.recorders import (
    HybridlogAggregateRecorder,
    HybridlogApplicationRecorder,
    HybridlogProcessRecorder,
    HybridlogSubscription,
    HybridlogTrackingRecorder,
)
from hybridlog.eventsourcing.store import ForeignStream, RecordConflict, SharedStore, stream_id_for

Factory = HybridlogFactory

__all__ = [
    "Factory",
    "ForeignStream",
    "HybridlogAggregateRecorder",
    "HybridlogApplicationRecorder",
    "HybridlogFactory",
    "HybridlogProcessRecorder",
    "HybridlogSubscription",
    "HybridlogTrackingRecorder",
    "RecordConflict",
    "SharedStore",
    "stream_id_for",
]
