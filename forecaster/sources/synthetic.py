"""A built-in moving scene with labelled injected anomalies.

A static textured background (smooth ground texture, a walkway with kerbs and paving joints,
a crossing path), pedestrians walking at steady speeds along three lanes and wrapping
around, and anomaly episodes of four kinds (:class:`AnomalyKind`). Frame ``i`` is a pure
function of the scene parameters and ``i``: the episode schedule is drawn lazily, one
independent block of frames at a time, from a generator seeded with ``(seed, block)``.
Normal frames are identical whatever ``anomaly_rate`` is.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["AnomalyKind", "Episode", "SyntheticScene"]

#: frames per schedule block; episodes never cross a block boundary
BLOCK = 1024
#: normal frames kept before every episode start (after the previous episode or block start)
GAP = 25
#: episode length range in frames (inclusive)
MIN_EPISODE, MAX_EPISODE = 15, 40
#: a fast object crosses the whole lane within at most this many frames
MAX_FAST_EPISODE = 28
#: sub-pixel positions rendered per axis
PHASES = 4
#: precomputed sensor-noise frames
NOISE_FRAMES = 32
#: frames over which an appearing or leaving object fades in or out
FADE = 3
_CACHED_BLOCKS = 64


class AnomalyKind(enum.IntEnum):
    """What happens during an anomaly episode."""

    FAST = 0  #: an object several times faster than the pedestrians crosses a lane
    AGAINST_FLOW = 1  #: a pedestrian walks against the direction of its lane
    LARGE = 2  #: a new large object (a cart) appears and drifts along a lane
    GLOBAL = 3  #: a sudden global brightness and contrast change


@dataclass(frozen=True, slots=True)
class Episode:
    """One anomaly episode: frames ``start`` (inclusive) to ``end`` (exclusive) are labelled 1."""

    start: int
    end: int
    kind: AnomalyKind
    lane: int = 0
    sprite: int = 0  #: index into the scene's extra sprites (FAST, AGAINST_FLOW, LARGE)
    position: float = 0.0  #: distance along the lane at the start
    speed: float = 0.0  #: signed distance along the lane per frame
    gain: float = 1.0  #: GLOBAL: contrast factor around mid-gray
    bias: float = 0.0  #: GLOBAL: brightness offset

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class _Lane:
    ox: float  # centre of the object when s = 0 (entry point, outside the frame)
    oy: float
    dx: float  # unit direction of the flow
    dy: float
    length: float  # s wraps modulo length; s in [margin, length - margin] is in view


@dataclass(frozen=True, slots=True)
class _Sprite:
    """Premultiplied layers per sub-pixel phase: out = out * keep + paint."""

    keep: tuple[np.ndarray, ...]  # (1 - alpha), float32, PHASES*PHASES variants
    paint: tuple[np.ndarray, ...]  # alpha * texture
    alpha: tuple[np.ndarray, ...]
    height: float
    width: float


@dataclass(frozen=True, slots=True)
class _Walker:
    lane: int
    sprite: int
    s0: float
    speed: float
    lateral: float


@dataclass(frozen=True, slots=True)
class _Block:
    episodes: tuple[Episode, ...]
    active: np.ndarray  # int16 per frame of the block: index into episodes or -1


class SyntheticScene:
    """Deterministic synthetic scene; ``frame(i)`` gives gray ``uint8 (height, width)`` frames.

    ``anomaly_rate`` is the probability, on each frame where an episode may start (no episode
    running, at least ``GAP`` normal frames since the last one or the block start, room for the
    episode before the block end), that an episode starts. ``anomaly_rate=0`` gives a purely
    normal scene.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        width: int = 160,
        height: int = 120,
        objects: int = 6,
        anomaly_rate: float = 0.01,
        noise: float = 2.0,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 4096:
                raise ValueError(f"{name} must be an integer from 16 to 4096, got {value!r}")
        if isinstance(objects, bool) or not isinstance(objects, int) or not 0 <= objects <= 64:
            raise ValueError(f"objects must be an integer from 0 to 64, got {objects!r}")
        if not 0.0 <= float(anomaly_rate) <= 1.0:
            raise ValueError(f"anomaly_rate must be from 0 to 1, got {anomaly_rate!r}")
        if not 0.0 <= float(noise) <= 50.0:
            raise ValueError(f"noise must be from 0 to 50, got {noise!r}")
        self.seed = seed
        self.width = width
        self.height = height
        self.objects = objects
        self.anomaly_rate = float(anomaly_rate)
        self.noise = float(noise)
        self._blocks: OrderedDict[int, _Block] = OrderedDict()
        self._build()

    # -- public API ------------------------------------------------------------------------

    @property
    def background(self) -> np.ndarray:
        """The static background without objects or noise, ``uint8 (height, width)``."""
        return np.clip(self._background + 0.5, 0, 255).astype(np.uint8)

    def frame(self, i: int) -> np.ndarray:
        """Render frame ``i`` (``i >= 0``) as a new ``uint8 (height, width)`` array."""
        if i < 0:
            raise ValueError(f"frame index must be >= 0, got {i}")
        canvas = self._background.copy()
        for walker in self._walkers:
            lane = self._lanes[walker.lane]
            self._draw(canvas, self._sprites[walker.sprite], lane,
                       walker.s0 + walker.speed * i, walker.lateral, 1.0)
        episode = self.episode_at(i)
        if episode is not None and episode.kind != AnomalyKind.GLOBAL:
            t = i - episode.start
            fade = 1.0
            if episode.kind != AnomalyKind.FAST:
                fade = min(1.0, (t + 1) / (FADE + 1), (episode.length - t) / (FADE + 1))
            self._draw(canvas, self._extra[episode.sprite], self._lanes[episode.lane],
                       episode.position + episode.speed * t, 0.0, fade, wrap=False)
        if self.noise > 0:
            canvas += self._noise[(i * 2654435761 + self.seed) % NOISE_FRAMES]
        np.clip(canvas, 0.0, 255.0, out=canvas)
        out = canvas.astype(np.uint8)
        if episode is not None and episode.kind == AnomalyKind.GLOBAL:
            levels = np.arange(256, dtype=np.float32)
            table = np.clip(episode.gain * (levels - 128.0) + 128.0 + episode.bias, 0, 255)
            out = cv2.LUT(out, table.astype(np.uint8))
        return out

    def label(self, i: int) -> int:
        """1 if frame ``i`` belongs to an anomaly episode, else 0."""
        if i < 0:
            raise ValueError(f"frame index must be >= 0, got {i}")
        block = self._block(i // BLOCK)
        return int(block.active[i % BLOCK] >= 0)

    def labels(self, n: int, start: int = 0) -> np.ndarray:
        """Labels of frames ``start .. start + n - 1`` as ``uint8 (n,)``."""
        if n < 0 or start < 0:
            raise ValueError(f"labels range must be non-negative, got start={start} n={n}")
        out = np.zeros(n, dtype=np.uint8)
        pos = start
        while pos < start + n:
            b, offset = divmod(pos, BLOCK)
            take = min(BLOCK - offset, start + n - pos)
            active = self._block(b).active[offset:offset + take]
            out[pos - start:pos - start + take] = active >= 0
            pos += take
        return out

    def episode_at(self, i: int) -> Episode | None:
        """The episode frame ``i`` belongs to, or None."""
        if i < 0:
            raise ValueError(f"frame index must be >= 0, got {i}")
        block = self._block(i // BLOCK)
        index = int(block.active[i % BLOCK])
        return block.episodes[index] if index >= 0 else None

    def episodes(self, stop: int, start: int = 0) -> list[Episode]:
        """Episodes that start in frames ``start .. stop - 1``, in order."""
        found: list[Episode] = []
        for b in range(start // BLOCK, (max(stop, 1) - 1) // BLOCK + 1):
            found.extend(e for e in self._block(b).episodes if start <= e.start < stop)
        return found

    # -- construction ----------------------------------------------------------------------

    def _build(self) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5CE4E]))
        h, w = self.height, self.width
        self._speed_scale = w / 160.0

        walker_shapes = []
        for k in range(self.objects):
            if k % 4 == 3:  # a box-like object: cart, suitcase, wheelchair
                side = rng.uniform(0.07, 0.10) * h
                size = (side, side * rng.uniform(0.9, 1.4))
                walker_shapes.append(("rect", size))
            else:  # a pedestrian: tall ellipse
                tall = rng.uniform(0.10, 0.15) * h
                walker_shapes.append(("person", (tall, tall * rng.uniform(0.40, 0.55))))
        fast_shape = ("bike", (0.11 * h, 0.20 * h))
        large_shape = ("cart", (rng.uniform(0.28, 0.36) * h, rng.uniform(0.30, 0.40) * w))
        margin = 5.0 + max(
            [0.5 * math.hypot(*s) for _, s in [*walker_shapes, fast_shape]] or [4.0])

        self._background, walkway, crossing = _render_background(rng, h, w)
        self._lanes = (
            _lane(walkway[0], walkway[1] - walkway[3] / 4, walkway[2], w, h, margin),
            _lane(walkway[0], walkway[1] + walkway[3] / 4, walkway[2] + math.pi, w, h, margin),
            _lane(crossing[0], crossing[1], crossing[2], w, h, margin),
        )
        lateral_room = (walkway[3] / 8, walkway[3] / 8, crossing[3] / 4)

        self._sprites = []
        walkers = []
        for k, (kind, size) in enumerate(walker_shapes):
            gray = rng.uniform(25, 75) if rng.random() < 0.6 else rng.uniform(200, 240)
            self._sprites.append(_make_sprite(kind, size, gray))
            lane_index = k % 3
            lane = self._lanes[lane_index]
            walkers.append(_Walker(
                lane=lane_index,
                sprite=k,
                s0=rng.uniform(0, lane.length),
                speed=rng.uniform(0.5, 1.3) * self._speed_scale,
                lateral=rng.uniform(-1, 1) * lateral_room[lane_index],
            ))
        self._walkers = tuple(walkers)

        # extra sprites used by episodes: a fast bike, two against-flow walkers, a large cart
        self._extra = (
            _make_sprite(fast_shape[0], fast_shape[1], 45.0),
            _make_sprite("person", (0.13 * h, 0.06 * h), 40.0),
            _make_sprite("person", (0.13 * h, 0.06 * h), 215.0),
            _make_sprite(large_shape[0], large_shape[1], 70.0),
        )
        noise_rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x401CE]))
        self._noise = noise_rng.normal(0.0, self.noise, (NOISE_FRAMES, h, w)).astype(np.float32)

    # -- schedule --------------------------------------------------------------------------

    def _block(self, b: int) -> _Block:
        block = self._blocks.get(b)
        if block is not None:
            self._blocks.move_to_end(b)
            return block
        block = self._make_block(b)
        self._blocks[b] = block
        if len(self._blocks) > _CACHED_BLOCKS:
            self._blocks.popitem(last=False)
        return block

    def _make_block(self, b: int) -> _Block:
        active = np.full(BLOCK, -1, dtype=np.int16)
        if self.anomaly_rate <= 0.0:
            return _Block((), active)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0xA40, b]))
        draws = rng.random(BLOCK)
        episodes: list[Episode] = []
        offset = GAP
        while offset < BLOCK - MIN_EPISODE:
            if draws[offset] >= self.anomaly_rate:
                offset += 1
                continue
            episode = self._draw_episode(rng, b * BLOCK + offset, BLOCK - offset)
            if episode is None:
                break
            active[offset:offset + episode.length] = len(episodes)
            episodes.append(episode)
            offset += episode.length + GAP
        return _Block(tuple(episodes), active)

    def _draw_episode(self, rng: np.random.Generator, start: int, room: int) -> Episode | None:
        kind = AnomalyKind(int(rng.integers(0, 4)))
        top = MAX_FAST_EPISODE if kind == AnomalyKind.FAST else MAX_EPISODE
        length = int(rng.integers(MIN_EPISODE, top + 1))
        lane_index = int(rng.integers(0, len(self._lanes)))
        u = rng.random(4)  # fixed number of draws per episode keeps the stream aligned
        if length > room:
            return None
        lane = self._lanes[lane_index]
        end = start + length
        margin = _lane_margin(lane, self.width, self.height)
        if kind == AnomalyKind.FAST:  # visible from about its first frame to its last
            position = 0.6 * margin
            return Episode(start, end, kind, lane_index, 0, position,
                           (lane.length - 2 * position) / length)
        if kind == AnomalyKind.AGAINST_FLOW:
            speed = (0.8 + 0.5 * u[0]) * self._speed_scale
            low = margin + speed * length
            high = max(low, lane.length - margin)
            position = low + (high - low) * u[1]
            return Episode(start, end, kind, lane_index, 1 + int(u[2] < 0.5), position, -speed)
        if kind == AnomalyKind.LARGE:
            speed = (0.4 + 0.5 * u[0]) * self._speed_scale
            low = margin
            high = max(low, lane.length - margin - speed * length)
            position = low + (high - low) * u[1]
            return Episode(start, end, kind, lane_index, 3, position, speed)
        if u[0] < 0.5:  # brighter, more contrast
            gain, bias = 1.25 + 0.3 * u[1], 25.0 + 25.0 * u[2]
        else:  # darker, flatter
            gain, bias = 0.45 + 0.25 * u[1], -25.0 - 25.0 * u[2]
        return Episode(start, end, kind, lane_index, 0, 0.0, 0.0, float(gain), float(bias))

    # -- drawing ---------------------------------------------------------------------------

    def _draw(self, canvas: np.ndarray, sprite: _Sprite, lane: _Lane, s: float,
              lateral: float, fade: float, *, wrap: bool = True) -> None:
        if wrap:
            s %= lane.length
        cx = lane.ox + s * lane.dx - lateral * lane.dy
        cy = lane.oy + s * lane.dy + lateral * lane.dx
        top, py = _split(cy - 1.0 - sprite.height / 2.0)
        left, px = _split(cx - 1.0 - sprite.width / 2.0)
        phase = py * PHASES + px
        keep, paint = sprite.keep[phase], sprite.paint[phase]
        sh, sw = keep.shape
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + sh, self.height), min(left + sw, self.width)
        if y0 >= y1 or x0 >= x1:
            return
        region = canvas[y0:y1, x0:x1]
        window = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
        if fade >= 1.0:
            region *= keep[window]
            region += paint[window]
        else:
            alpha = sprite.alpha[phase][window] * fade
            region *= 1.0 - alpha
            region += paint[window] * fade


def _split(value: float) -> tuple[int, int]:
    """Integer pixel and sub-pixel phase (0 .. PHASES-1) of a coordinate, rounded to a phase."""
    steps = math.floor(value * PHASES + 0.5)
    whole, phase = divmod(steps, PHASES)
    return int(whole), int(phase)


def _lane(x: float, y: float, angle: float, w: int, h: int, margin: float) -> _Lane:
    """A lane through (x, y) heading ``angle``, clipped to the frame grown by ``margin``."""
    dx, dy = math.cos(angle), math.sin(angle)
    t_low, t_high = -math.inf, math.inf
    for p, d, size in ((x, dx, w), (y, dy, h)):
        if abs(d) < 1e-9:
            continue
        a, b = (-margin - p) / d, (size + margin - p) / d
        t_low, t_high = max(t_low, min(a, b)), min(t_high, max(a, b))
    return _Lane(x + t_low * dx, y + t_low * dy, dx, dy, t_high - t_low)


def _lane_margin(lane: _Lane, w: int, h: int) -> float:
    """Distance along the lane from its entry point to the inside of the frame (upper bound)."""
    inside = 0.0
    for p, d, size in ((lane.ox, lane.dx, w), (lane.oy, lane.dy, h)):
        if abs(d) < 1e-9:
            continue
        edge = 0.0 if d > 0 else float(size)
        inside = max(inside, (edge - p) / d)
    return min(inside + 4.0, lane.length / 2)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    small = rng.random((max(2, round(h / cell)) + 1, max(2, round(w / cell)) + 1))
    return cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


def _render_background(
    rng: np.random.Generator, h: int, w: int
) -> tuple[np.ndarray, tuple[float, float, float, float], tuple[float, float, float, float]]:
    """Background (float32) and the walkway and crossing as (x, y, angle, width)."""
    texture = (60.0 * _smooth_noise(rng, h, w, 24.0) + 25.0 * _smooth_noise(rng, h, w, 6.0)
               + 10.0 * _smooth_noise(rng, h, w, 2.0))
    ground = 85.0 + texture  # lawn-like: darker, textured
    image = ground.astype(np.float32)

    def band(x: float, y: float, angle: float, width: float) -> np.ndarray:
        dx, dy = math.cos(angle), math.sin(angle)
        reach = 4.0 * (w + h)
        half = width / 2.0
        nx, ny = -dy * half, dx * half
        corners = np.array([
            [x - dx * reach + nx, y - dy * reach + ny],
            [x + dx * reach + nx, y + dy * reach + ny],
            [x + dx * reach - nx, y + dy * reach - ny],
            [x - dx * reach - nx, y - dy * reach - ny],
        ])
        mask = np.zeros((h, w), dtype=np.uint8)
        cv2.fillPoly(mask, [np.round(corners * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
        return mask.astype(np.float32) / 255.0

    walkway = (w / 2.0, h * rng.uniform(0.45, 0.60), math.radians(rng.uniform(-8, 8)), 0.40 * h)
    crossing = (w * rng.uniform(0.25, 0.75), h / 2.0,
                math.radians(90 + rng.uniform(-15, 15)), 0.16 * w)
    paving = 150.0 + 0.4 * texture
    for geometry, tone in ((crossing, 0.85), (walkway, 1.0)):
        mask = band(*geometry)
        image = image * (1 - mask) + paving * tone * mask
        # kerbs: dark edges along both sides
        outer = band(geometry[0], geometry[1], geometry[2], geometry[3] + 3.0)
        image -= 45.0 * np.clip(outer - mask, 0, 1)
    # paving joints across the walkway
    wx, wy, angle, width = walkway
    joints = np.zeros((h, w), dtype=np.uint8)
    dx, dy = math.cos(angle), math.sin(angle)
    step = max(8.0, w / 12.0)
    for k in range(-int(2 * w / step), int(2 * w / step) + 1):
        px, py = wx + dx * k * step, wy + dy * k * step
        p1 = (round((px + dy * width / 2) * 16), round((py - dx * width / 2) * 16))
        p2 = (round((px - dy * width / 2) * 16), round((py + dx * width / 2) * 16))
        cv2.line(joints, p1, p2, 255, 1, cv2.LINE_AA, 4)
    image -= 20.0 * (joints.astype(np.float32) / 255.0) * band(*walkway)
    # a few static objects: benches, a lamp post, a drain
    for _ in range(3):
        bh, bw = rng.uniform(0.04, 0.08) * h, rng.uniform(0.08, 0.18) * w
        y = rng.uniform(0, h - bh)
        x = rng.uniform(0, w - bw)
        tone = rng.uniform(40, 70) if rng.random() < 0.5 else rng.uniform(190, 220)
        cv2.rectangle(image, (round(x), round(y)), (round(x + bw), round(y + bh)), tone, -1)
    return np.ascontiguousarray(np.clip(image, 0, 255), dtype=np.float32), walkway, crossing


def _make_sprite(kind: str, size: tuple[float, float], gray: float) -> _Sprite:
    """Soft-edged sprite of ``size`` (height, width) pre-rendered at every sub-pixel phase."""
    height, width = size
    sh, sw = math.ceil(height) + 2, math.ceil(width) + 2
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32) + 0.5
    keeps, paints, alphas = [], [], []
    for phase in range(PHASES * PHASES):
        py, px = divmod(phase, PHASES)
        cy = 1.0 + height / 2.0 + py / PHASES
        cx = 1.0 + width / 2.0 + px / PHASES
        ry, rx = (yy - cy) / (height / 2.0), (xx - cx) / (width / 2.0)
        if kind in ("person", "bike"):
            dist = np.sqrt(ry * ry + rx * rx)
            alpha = np.clip((1.0 - dist) * min(height, width) / 2.0 + 0.5, 0.0, 1.0)
        else:
            inner = np.minimum(height / 2.0 - np.abs(yy - cy), width / 2.0 - np.abs(xx - cx))
            alpha = np.clip(inner + 0.5, 0.0, 1.0)
        texture = np.full_like(alpha, gray)
        shade = -1.0 if gray > 128 else 1.0
        if kind == "person":  # head darker/lighter than the body, legs in between
            texture += shade * np.where(ry < -0.55, 30.0, np.where(ry > 0.35, 15.0, 0.0))
        elif kind == "bike":  # wheels
            texture += shade * 35.0 * (np.abs(np.abs(rx) - 0.6) < 0.25) * (ry > 0.0)
        else:  # cart or box: a border and a handle bar
            border = np.minimum(height / 2.0 - np.abs(yy - cy), width / 2.0 - np.abs(xx - cx))
            texture += shade * 40.0 * (border < max(1.5, min(height, width) * 0.12))
        alpha = alpha.astype(np.float32)
        alphas.append(alpha)
        keeps.append((1.0 - alpha).astype(np.float32))
        paints.append((alpha * np.clip(texture, 0, 255)).astype(np.float32))
    return _Sprite(tuple(keeps), tuple(paints), tuple(alphas), height, width)
