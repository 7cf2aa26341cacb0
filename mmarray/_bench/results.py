"""What a run of ``mmarray bench`` measured: plain data, no presentation.

The runner fills these in; the report module turns them into a table, a
verdict, JSON and a chart.  Both import this module, and it imports
neither.

The rule for calling a difference lives here, so that the table, the
verdict and the JSON agree: one method is faster or slower than another
only when their ranges of run times do not overlap; otherwise they are
*level*.  A range runs from the fastest run to the slowest *kept* run:
the slowest run in every five (:data:`DROPPED_PER`) is left out, because
noise from other programs on the machine only ever slows a run down, and
one such run would otherwise hide any difference.  With seven runs each
(six kept), two equally fast methods come apart by chance about once in
two hundred comparisons; with ten (eight kept), once in a thousand or
more.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Literal

#: Of every this many runs, the slowest is left out of a range.
DROPPED_PER = 5
#: Ratios closer to 1 than this are level even when the ranges are apart:
#: they print as "1.00x".
TIE = 0.005


@dataclass
class Measurement:
    """Every run of one method in one section."""

    test: str  #: "random" or "sequential"
    cache: str  #: "warm" or "cold"
    record: int | None  #: bytes per record (random reads), else None
    method: str
    label: str
    baseline: bool
    times: tuple[float, ...]  #: seconds of each run, in the order they ran
    count: int  #: reads per run (random) or bytes per run (sequential)
    speedup: float = math.nan  #: median time(baseline) / median time(self); > 1 is faster
    cached_after: float | None = None  #: fraction of the file cached after a cold run
    #: pages a cold run added to the page cache, per read asked for (random reads)
    pages_per_read: float | None = None
    #: faster, slower or level than the section's baseline (see :meth:`compare`)
    call: str | None = None

    @property
    def section(self) -> tuple[str, str, int | None]:
        return (self.test, self.cache, self.record)

    @property
    def seconds(self) -> float:
        """The median time of one run."""
        return statistics.median(self.times)

    @property
    def fastest(self) -> float:
        return min(self.times)

    @property
    def slowest(self) -> float:
        """The slowest run kept in the range (see :data:`DROPPED_PER`)."""
        times = sorted(self.times)
        return times[len(times) - 1 - len(times) // DROPPED_PER]

    @property
    def per_read(self) -> float:
        return self.seconds / self.count

    @property
    def gb_per_s(self) -> float:
        return self.count / self.seconds / 1e9

    def compare(self, other: Measurement) -> Comparison:
        """How this method fared against ``other`` in the same section."""
        ratio = other.seconds / self.seconds
        if abs(ratio - 1) < TIE:
            call = "level"
        elif self.slowest < other.fastest:
            call = "faster"
        elif self.fastest > other.slowest:
            call = "slower"
        else:
            call = "level"
        return Comparison(ratio, call)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["times"] = list(self.times)
        out["seconds"] = self.seconds
        out["seconds_min"], out["seconds_max_kept"] = self.fastest, self.slowest
        if self.test == "random":
            out["seconds_per_read"] = self.per_read
        else:
            out["gb_per_s"] = self.gb_per_s
        # asv's convention (lower is better): time(method) / time(baseline).
        out["time_ratio"] = 1 / self.speedup if self.speedup else math.nan
        return out


@dataclass(frozen=True)
class Comparison:
    """One method against another: the ratio of their medians and the call."""

    #: median time(other) / median time(method): above 1, the method was faster
    ratio: float
    #: "faster" or "slower" when the two ranges of kept runs do not overlap, else "level"
    call: Literal["faster", "slower", "level"]


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

    def compare(self, test: str, cache: str, record: int | None, method: str,
                against: str) -> Comparison | None:
        """``method`` against ``against`` in one section, or None if either is missing."""
        m, a = self.find(test, cache, record, method), self.find(test, cache, record, against)
        return None if m is None or a is None else m.compare(a)

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
