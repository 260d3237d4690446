"""The pieces of ``scripts/bench.py``: events, contenders, measurements and the report.

``events`` makes the workload data, ``contenders`` holds every store that is measured,
``measure`` the append / read / store-operation workloads, ``randomread``, ``groupcommit`` and
``memory`` the special measurements, ``report`` the tables and the TARGETS section.
"""
