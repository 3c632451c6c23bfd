"""The ``synthetic:`` source string: its parameters, parsed and checked."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

from forecaster.errors import SourceError
from forecaster.sources.synthetic import SyntheticScene

SYNTHETIC_PREFIX = "synthetic:"


@dataclass(frozen=True, slots=True)
class SyntheticParams:
    """Parameters of a ``synthetic:`` source string."""

    seed: int = 0
    fps: float = 25.0
    anomaly_rate: float = 0.01
    frames: int | None = None
    width: int = 160
    height: int = 120
    objects: int = 6
    noise: float = 2.0

    # (kind, low, high) of each parameter
    RULES: ClassVar[dict[str, tuple[type, float, float]]] = {
        "seed": (int, 0, 2**63 - 1),
        "fps": (float, 0.0, 10000.0),
        "anomaly_rate": (float, 0.0, 1.0),
        "frames": (int, 1, 2**63 - 1),
        "width": (int, 16, 4096),
        "height": (int, 16, 4096),
        "objects": (int, 0, 64),
        "noise": (float, 0.0, 50.0),
    }

    def uri(self) -> str:
        """The canonical source string of these parameters."""
        query = "&".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self) if getattr(self, f.name) is not None
        )
        return f"{SYNTHETIC_PREFIX}?{query}"

    def scene(self) -> SyntheticScene:
        return SyntheticScene(seed=self.seed, width=self.width, height=self.height,
                              objects=self.objects, anomaly_rate=self.anomaly_rate,
                              noise=self.noise)


def parse_synthetic_uri(uri: str) -> SyntheticParams:
    """Parse ``synthetic:`` or ``synthetic:?seed=3&fps=0...``; SourceError naming the parameter."""
    if not uri.lower().startswith(SYNTHETIC_PREFIX):
        raise SourceError(f"not a synthetic source string (must start with 'synthetic:'): {uri}")
    rest = uri[len(SYNTHETIC_PREFIX):]
    if rest and not rest.startswith("?"):
        raise SourceError(f"synthetic source string must be 'synthetic:' or 'synthetic:?key=value"
                          f"&...', got {uri!r}")
    query = rest[1:]
    values: dict[str, object] = {}
    for item in filter(None, query.split("&")):
        key, sep, text = item.partition("=")
        key = key.strip()
        rule = SyntheticParams.RULES.get(key)
        if rule is None:
            known = ", ".join(SyntheticParams.RULES)
            raise SourceError(f"unknown synthetic source parameter {key!r} in {uri!r} "
                              f"(known: {known})")
        if key in values:
            raise SourceError(f"synthetic source parameter {key!r} given twice in {uri!r}")
        kind, low, high = rule
        values[key] = _parse_value(key, text.strip() if sep else "", kind, low, high, uri)
    # each value has its field's type: _parse_value converted it by the field's rule
    return SyntheticParams(**values)  # type: ignore[arg-type]


def _parse_value(key: str, text: str, kind: type, low: float, high: float, uri: str) -> object:
    expected = f"{'an integer' if kind is int else 'a number'} from {low:g} to {high:g}"
    try:
        value: float = int(text) if kind is int else float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise SourceError(f"bad value for synthetic source parameter {key}: {text!r} "
                          f"(expected {expected}) in {uri!r}")
    return value
