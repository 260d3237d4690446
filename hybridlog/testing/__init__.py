"""Test support shipped with hybridlog: the one home of what backends and users' tests reuse.

- ``harness``: the writer-kill harness (child processes killed at a failpoint or an acknowledgement).

Not imported by ``import hybridlog``: it needs pytest and Hypothesis, which are not runtime
dependencies. Install them with the ``testing`` extra (``pip install hybridlog[testing]``).
"""
