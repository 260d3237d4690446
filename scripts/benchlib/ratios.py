"""Ratios between the contenders of one run, written into the results they belong to.

Every hybridlog figure is shown as a ratio to what the contenders did in the same run (this
machine is noisy; absolute numbers are not comparable between runs). ``add_ratios`` writes
``ratio_vs_<contender>``, ``speed_vs_uncompressed`` and ``ratio_vs_read_verify``; the
group-commit ratios and bounds are written by ``groupcommit`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchlib.contenders import EVENTSOURCING, HYBRIDLOG, NONE, RAW_FLOOR, SQLITE_FULL, SQLITE_NORMAL, BenchError
from benchlib.measure import JSONValue, Result, number
from benchlib.randomread import PREAD_FLOOR

SUBJECT = HYBRIDLOG
COMPARED = ("append", "read_verify")
OTHERS = (RAW_FLOOR, SQLITE_NORMAL, SQLITE_FULL, EVENTSOURCING)


def _comparable(subject: Result, other: Result) -> bool:
    """Same workload and event size; for appends also the batch size and fsync (None: any fsync)."""
    if subject["workload"] != other["workload"] or subject.get("event_size") != other.get("event_size"):
        return False
    if subject["workload"] == "append":
        return subject["batch_size"] == other["batch_size"] and other["fsync"] in (None, subject["fsync"])
    return True


def only(results: Sequence[Result], what: str) -> Result:
    """The one result in ``results``; BenchError if there are none or several."""
    if len(results) != 1:
        raise BenchError(f"expected one {what} result, found {len(results)}")
    return results[0]


def add_ratios(results: list[Result]) -> None:
    """Write every ratio the report shows into the results it belongs to."""
    others = [r for r in results if r["workload"] in COMPARED and r["contender"] != SUBJECT]
    subjects = [r for r in results if r["workload"] in COMPARED and r["contender"] == SUBJECT]
    for r in subjects:
        for other in others:
            if _comparable(r, other):
                key = f"ratio_vs_{other['contender']}"
                if key in r:
                    raise BenchError(f"two {other['contender']} results match {r!r}")
                r[key] = number(r, "events_per_s") / number(other, "events_per_s")
        if r["compression"] != NONE:
            plain = only(
                [
                    p
                    for p in subjects
                    if p["compression"] == NONE and _comparable(r, p) and p.get("fsync") == r.get("fsync")
                ],
                f"uncompressed twin of {r!r}",
            )
            r["speed_vs_uncompressed"] = number(r, "events_per_s") / number(plain, "events_per_s")
    floors = [r for r in results if r["workload"] == "random_read" and r["contender"] == PREAD_FLOOR]
    for r in results:
        if r["workload"] == "random_read" and r["contender"] == SUBJECT:
            floor = only(floors, "random-read floor")
            r[f"ratio_vs_{PREAD_FLOOR}"] = number(r, "reads_per_s") / number(floor, "reads_per_s")
        elif r["workload"] == "rebuild_catalog":
            read = only(
                [
                    s
                    for s in subjects
                    if s["workload"] == "read_verify"
                    and s["compression"] == NONE
                    and s["event_size"] == r["event_size"]
                ],
                "uncompressed hybridlog read + verify",
            )
            r["ratio_vs_read_verify"] = number(r, "events_per_s") / number(read, "events_per_s")


def find(results: Sequence[Result], **criteria: JSONValue) -> Result | None:
    """The one result whose fields equal ``criteria`` (None if there is none)."""
    found = [r for r in results if all(r.get(key) == value for key, value in criteria.items())]
    if len(found) > 1:
        raise BenchError(f"{len(found)} results match {criteria!r}")
    return found[0] if found else None


def value(result: Result | None, key: str) -> float | None:
    """``result[key]`` as a float, None when there is no such result or the figure is None."""
    return None if result is None or result.get(key) is None else number(result, key)
