"""Byte sizes as ``mmarray bench`` reads and prints them (``64M``, ``1 GiB``).

The bottom of the bench package: it imports nothing from it.
"""

from __future__ import annotations

import re

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}


def parse_size(text: str) -> int:
    """Bytes from ``"268435456"``, ``"64M"``, ``"1G"``, ``"1.5GiB"``, ``"512K"``.

    Suffixes are binary (K = 1024 bytes).

    Examples
    --------
    >>> parse_size("64M"), parse_size("1g"), parse_size("4096")
    (67108864, 1073741824, 4096)
    """
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"size must be a number of bytes with an optional K/M/G/T suffix, "
            f"e.g. 64M or 1G (got {text!r})"
        )
    return int(float(match[1]) * _UNITS[match[2].lower()])


def format_size(n: int) -> str:
    """``268435456`` -> ``"256 MiB"``."""
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"
