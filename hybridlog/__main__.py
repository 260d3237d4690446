"""``python -m hybridlog``: the same as the ``hybridlog`` command."""

from hybridlog.cli import main

main()
