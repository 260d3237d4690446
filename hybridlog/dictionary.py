"""Stream dictionaries: the ``.zdict`` file that holds one, and loading and caching them for reads.

A 256-byte JSON event hardly compresses on its own (zstd finds little to repeat inside it); a
zstd dictionary trained on the stream's own payloads (``training.py``) gives it that context.
Each dictionary lives in a file of its own in the stream's directory, next to the segments::

    streams/<stream_id>/<dictionary_no>.zdict     20 digits, zero-padded (``segment.py``)

so the catalog stays rebuildable from the stream directories alone. A dictionary file::

    offset  size  field
         0     4  magic          b"HLZD"
         4     1  version        1
         5     3  reserved       0
         8     8  stream_id      u64, the stream it was trained for
        16     8  dictionary_no  u64, the number in its file name
        24     4  length         u32, N: the size of the zstd dictionary
        28     N  dictionary     a zstd dictionary whose id is ``record.dictionary_id(dictionary_no)``
      28+N    32  digest         BLAKE3 of bytes 0 .. 28+N

The writer creates it durably (temp file, fsync, rename, fsync the directory) before it frames
any record with it, and never changes or replaces it. Loading checks every field, so a damaged
file, or one copied from another stream or number, is refused by name (``DictionaryUnavailable``)
rather than decoding garbage; beyond that, records hash their uncompressed payload, so a wrong
dictionary that passes these checks still fails verification.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from pathlib import Path

import blake3
import zstandard

from hybridlog.layout import dictionary_path
from hybridlog.record import FrameError, dictionary_id

DICTIONARY_MAGIC = b"HLZD"
DICTIONARY_VERSION = 1
DICTIONARY_HEADER = struct.Struct("<4sB3sQQI")
DIGEST_SIZE = 32
MAX_DICTIONARY_SIZE = 1024 * 1024
"""The largest zstd dictionary a file may hold (the writer makes 16 KiB ones); bounds every load."""

_CACHE_CAPACITY = 64


class DictionaryUnavailable(FrameError):
    """The dictionary a payload needs cannot be used: ``missing`` file, or a damaged one; ``path`` names it.

    ``walk.open_record`` turns it into a ``MissingDictionary`` / ``DamagedDictionary`` naming the record.
    """

    def __init__(self, reason: str, *, path: Path, missing: bool) -> None:
        super().__init__(reason)
        self.path = path
        self.missing = missing


class StreamDictionary:
    """One stream's zstd dictionary, loaded and checked; hands out a decompressor per thread."""

    def __init__(self, stream_id: int, number: int, data: bytes) -> None:
        self.stream_id = stream_id
        self.number = number
        self.data = data
        self.zstd = zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_FULLDICT)
        self._per_thread = threading.local()

    def decompressor(self) -> zstandard.ZstdDecompressor:
        """This thread's decompressor for the dictionary (creating one costs far more than a record)."""
        found: zstandard.ZstdDecompressor | None = getattr(self._per_thread, "decompressor", None)
        if found is None:
            found = self._per_thread.decompressor = zstandard.ZstdDecompressor(dict_data=self.zstd)
        return found

    def file_bytes(self) -> bytes:
        """The ``.zdict`` file holding this dictionary (the layout in the module docstring)."""
        body = (
            DICTIONARY_HEADER.pack(
                DICTIONARY_MAGIC, DICTIONARY_VERSION, bytes(3), self.stream_id, self.number, len(self.data)
            )
            + self.data
        )
        return body + blake3.blake3(body).digest()


def parse_dictionary_file(content: bytes, *, stream_id: int, number: int, path: Path) -> StreamDictionary:
    """The dictionary in a ``.zdict`` file's bytes, checked to be dictionary ``number`` of ``stream_id``."""

    def damaged(why: str) -> DictionaryUnavailable:
        return DictionaryUnavailable(f"dictionary file {path} is damaged ({why})", path=path, missing=False)

    if len(content) < DICTIONARY_HEADER.size + DIGEST_SIZE:
        raise damaged(f"{len(content)} bytes, too short")
    body, digest = content[:-DIGEST_SIZE], content[-DIGEST_SIZE:]
    if blake3.blake3(body).digest() != digest:
        raise damaged("digest mismatch")
    magic, version, reserved, owner, found_number, length = DICTIONARY_HEADER.unpack_from(body)
    if magic != DICTIONARY_MAGIC or version != DICTIONARY_VERSION or reserved != bytes(3):
        raise damaged("not a version 1 dictionary file")
    if owner != stream_id or found_number != number:
        raise damaged(f"it is dictionary {found_number} of stream {owner}, not {number} of stream {stream_id}")
    if length != len(body) - DICTIONARY_HEADER.size or length > MAX_DICTIONARY_SIZE:
        raise damaged(f"length field {length} does not fit the file")
    dictionary = StreamDictionary(stream_id, number, body[DICTIONARY_HEADER.size :])
    if dictionary.zstd.dict_id() != dictionary_id(number):
        raise damaged(f"the zstd dictionary inside has id {dictionary.zstd.dict_id()}, not {dictionary_id(number)}")
    return dictionary


def salvage_dictionary(content: bytes, *, stream_id: int, number: int) -> StreamDictionary | None:
    """The zstd dictionary in a damaged ``.zdict`` file, read where the layout puts it and ignoring
    the header and digest (None: there is no zstd dictionary with the right id there).

    Only for repair: whether it is the right dictionary is proven by the records that name it,
    which must all decode to the hashes they store (``stream_repair.py``).
    """
    if len(content) < DICTIONARY_HEADER.size + DIGEST_SIZE:
        return None
    try:
        candidate = StreamDictionary(stream_id, number, content[DICTIONARY_HEADER.size : -DIGEST_SIZE])
        ok = candidate.zstd.dict_id() == dictionary_id(number)
    except zstandard.ZstdError:
        return None
    return candidate if ok else None


def load_dictionary(data_dir: Path, stream_id: int, number: int) -> StreamDictionary:
    """Read and check a stream's dictionary file; DictionaryUnavailable if it is missing or damaged."""
    path = dictionary_path(data_dir, stream_id, number)
    try:
        with path.open("rb") as f:
            content = f.read(DICTIONARY_HEADER.size + MAX_DICTIONARY_SIZE + DIGEST_SIZE + 1)
    except FileNotFoundError as e:
        raise DictionaryUnavailable(f"dictionary file {path} is missing", path=path, missing=True) from e
    except OSError as e:
        raise DictionaryUnavailable(f"dictionary file {path} cannot be read ({e})", path=path, missing=False) from e
    return parse_dictionary_file(content, stream_id=stream_id, number=number, path=path)


class DictionaryCache:
    """The dictionaries of a store's streams, loaded on first use and kept (least recently used go).

    It is the ``record.DictionarySource`` the read paths decode with. A file that is missing or
    damaged is not remembered, so restoring it from a backup is seen on the next read.
    """

    def __init__(self, data_dir: Path, capacity: int = _CACHE_CAPACITY) -> None:
        self._data_dir = data_dir
        self._capacity = capacity
        self._loaded: OrderedDict[tuple[int, int], StreamDictionary] = OrderedDict()
        self._lock = threading.Lock()
        self._per_thread = threading.local()  # each thread's last decompressor: records come in runs

    def get(self, stream_id: int, number: int) -> StreamDictionary:
        """A stream's dictionary ``number``, remembered or loaded (DictionaryUnavailable if it cannot be)."""
        key = (stream_id, number)
        with self._lock:
            found = self._loaded.get(key)
            if found is not None:
                self._loaded.move_to_end(key)
                return found
        loaded = load_dictionary(self._data_dir, stream_id, number)
        self.remember(loaded)
        return loaded

    def remember(self, dictionary: StreamDictionary) -> None:
        """Keep a dictionary this process loaded or made (the writer's, once its file is durable)."""
        with self._lock:
            self._loaded[(dictionary.stream_id, dictionary.number)] = dictionary
            self._loaded.move_to_end((dictionary.stream_id, dictionary.number))
            while len(self._loaded) > self._capacity:
                self._loaded.popitem(last=False)

    def decompressor(self, stream_id: int, dictionary_no: int) -> zstandard.ZstdDecompressor:
        """A decompressor with a stream's dictionary; a thread reuses its last one, as records come in runs."""
        last: tuple[int, int, zstandard.ZstdDecompressor] | None = getattr(self._per_thread, "last", None)
        if last is not None and last[0] == stream_id and last[1] == dictionary_no:
            return last[2]
        found = self.get(stream_id, dictionary_no).decompressor()
        self._per_thread.last = (stream_id, dictionary_no, found)
        return found
