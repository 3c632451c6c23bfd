"""The frame sizes the models take: the one rule for config, command line and builders.

It lives beside the sources so that preprocessing checks a size without importing the
model package; :mod:`forecaster.model` names it too.
"""

from __future__ import annotations

#: a frame side must be at least this, and divisible by 4 (the encoder halves it twice)
MIN_FRAME_SIDE = 16


def frame_size_fits(height: int, width: int) -> bool:
    """Whether the models take ``height`` x ``width`` frames (the one rule for config,
    command line and builders)."""
    return min(height, width) >= MIN_FRAME_SIDE and height % 4 == 0 and width % 4 == 0
