"""What a run of ``mmarray bench`` measured: plain data, no presentation.

The runner fills these in; the report module turns them into a table, a
verdict, JSON and a chart.  Both import this module, and it imports
neither.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Measurement:
    """The best of several runs of one method in one section."""

    test: str  #: "random" or "sequential"
    cache: str  #: "warm" or "cold"
    record: int | None  #: bytes per record (random reads), else None
    method: str
    label: str
    baseline: bool
    seconds: float  #: best time of one run
    count: int  #: reads per run (random) or bytes per run (sequential)
    speedup: float = math.nan  #: time(baseline) / seconds; > 1 is faster
    cached_after: float | None = None  #: fraction of the file cached after a cold run
    #: pages a cold run added to the page cache, per read asked for (random reads)
    pages_per_read: float | None = None

    @property
    def section(self) -> tuple[str, str, int | None]:
        return (self.test, self.cache, self.record)

    @property
    def per_read(self) -> float:
        return self.seconds / self.count

    @property
    def gb_per_s(self) -> float:
        return self.count / self.seconds / 1e9

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.test == "random":
            out["seconds_per_read"] = self.per_read
        else:
            out["gb_per_s"] = self.gb_per_s
        # asv's convention (lower is better): time(method) / time(baseline).
        out["time_ratio"] = 1 / self.speedup if self.speedup else math.nan
        return out


@dataclass
class Report:
    """What :func:`~mmarray._bench.runner.run_bench` measured, with the facts
    needed to read it."""

    info: dict[str, Any]
    measurements: list[Measurement]
    cold_reason: str | None  #: why the cold cache was not measured at all, or None
    #: why the cold random reads (on their own file) were not measured, or None
    cold_random_reason: str | None = None

    def find(self, test: str, cache: str, record: int | None, method: str) -> Measurement | None:
        for m in self.measurements:
            if m.section == (test, cache, record) and m.method == method:
                return m
        return None

    def speedup(self, test: str, cache: str, record: int | None, method: str) -> float | None:
        m = self.find(test, cache, record, method)
        return None if m is None or math.isnan(m.speedup) else m.speedup

    def ratio(self, test: str, cache: str, record: int | None, method: str,
              against: str) -> float | None:
        """``time(against) / time(method)`` in one section (> 1: ``method`` is faster)."""
        m, a = self.find(test, cache, record, method), self.find(test, cache, record, against)
        return None if m is None or a is None else a.seconds / m.seconds

    def as_dict(self) -> dict[str, Any]:
        """The facts and rows (:func:`~mmarray._bench.report.to_json` adds the verdict)."""
        cold_file = self.info.get("cold_file", {})
        random_reason = self.cold_reason or self.cold_random_reason
        return {
            **self.info,
            "cold_cache": {
                "measured": self.cold_reason is None,
                "reason": self.cold_reason,
                "random_reads": {
                    "measured": random_reason is None,
                    "reason": random_reason,
                    "file_size": cold_file.get("size"),
                },
            },
            "results": [m.as_dict() for m in self.measurements],
        }
