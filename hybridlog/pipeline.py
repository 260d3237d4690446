"""``AppendPipeline``: the reusable state of the framing stage of an append.

Stage 1 (framing, hashing, compressing) fills the pipeline's buffer; stage 2 writes it to the
segment. Holding the buffer and the zstd compressor here lets a caller that appends in a loop
reuse both instead of allocating them per batch. A pipeline serves one append at a time (the
store's lock sees to that for the appends it runs).
"""

from __future__ import annotations

import zstandard

from hybridlog.record import new_compressor


class AppendPipeline:
    """Reusable buffer and compressor for ``Storage.append_batch_pipelined``."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.compressor: zstandard.ZstdCompressor = new_compressor()
