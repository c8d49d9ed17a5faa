"""Small formatting helpers shared by the renderers."""

from __future__ import annotations

import math


def human_size(n: int) -> str:
    """Size as `ls -h` shows it: 512B, 4.0K, 184K, 1.2G (rounded up, 1024-based)."""
    if n < 1024:
        return f"{n}B"
    value = n / 1024
    for unit in "KMGT":
        if math.ceil(value) < 1024:
            break
        value /= 1024
    else:
        unit = "P"  # and beyond: the number grows instead
    if value < 10 and math.ceil(value * 10) < 100:
        return f"{math.ceil(value * 10) / 10:.1f}{unit}"
    return f"{math.ceil(value)}{unit}"
