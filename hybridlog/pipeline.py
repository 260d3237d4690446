"""``AppendPipeline``: the reusable state of the framing stage of an append.

Stage 1 (framing, hashing, compressing) fills the pipeline's buffer; stage 2 writes it to the
segment. Holding the buffer and the zstd compressors here lets a caller that appends in a loop
reuse them instead of allocating them per batch. A pipeline serves one append at a time (the
store's lock sees to that for the appends it runs).
"""

from __future__ import annotations

from collections import OrderedDict

from hybridlog.dictionary import StreamDictionary
from hybridlog.record import PayloadCompressor, dictionary_compressor, new_compressor

_DICTIONARY_COMPRESSORS = 8
"""Compressors kept for stream dictionaries (creating one costs about as much as 15 small records)."""


class AppendPipeline:
    """Reusable buffer and compressors for ``Storage.append_batch_pipelined``."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.compressor: PayloadCompressor = new_compressor()
        self._with_dictionary: OrderedDict[tuple[int, int], tuple[StreamDictionary, PayloadCompressor]] = OrderedDict()

    def compressor_for(self, dictionary: StreamDictionary | None) -> PayloadCompressor:
        """The compressor for a stream whose new records use ``dictionary`` (None: plain zstd)."""
        if dictionary is None:
            return self.compressor
        key = (dictionary.stream_id, dictionary.number)
        found = self._with_dictionary.get(key)
        if found is not None and found[0] is dictionary:
            self._with_dictionary.move_to_end(key)
            return found[1]
        compressor = dictionary_compressor(dictionary.zstd)
        self._with_dictionary[key] = (dictionary, compressor)
        self._with_dictionary.move_to_end(key)
        while len(self._with_dictionary) > _DICTIONARY_COMPRESSORS:
            self._with_dictionary.popitem(last=False)
        return compressor
