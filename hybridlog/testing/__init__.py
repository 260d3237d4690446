"""Test support shipped with hybridlog: the one home of what backends and users' tests reuse.

- ``contract``: ``BackendContract``, the ``StorageBackend`` contract suite a backend subclasses
  (its tests in ``contract_writes`` and ``contract_reads``; harnesses in ``backends``);
- ``damage``: helpers that damage a store on purpose and read whole streams back;
- ``clocks``: deterministic clocks (``make_clock``, ``ManualClock``);
- ``harness``: the writer-kill harness (a child process SIGKILLed at a failpoint of the write path,
  ``hybridlog.failpoints``, or after its Nth acknowledgement).

Not imported by ``import hybridlog``: it needs pytest and Hypothesis, which are not runtime
dependencies. Install them with the ``testing`` extra (``pip install hybridlog[testing]``; the
``dev`` extra has them too).
"""
