"""Drawn faces of the demo clips: a Haar-detectable face whose expression carries the visual group.

Usage:
    from demo.faces import render_frames
    frames = render_frames("happy", 0.9, rng, size=160, seconds=2.0, fps=10)   # list of (H, W, 3) uint8 BGR
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Visual cue group of each class: {neutral, worried} resting face, {angry, sad} frown and knitted brows,
# {happy, surprise} open smile and raised brows. They cross the audio groups (demo.audio).
VISUAL_GROUP: dict[str, int] = {"neutral": 0, "worried": 0, "angry": 1, "sad": 1, "happy": 2, "surprise": 2}

@dataclass(frozen=True)
class FaceCues:
    """Expression of a drawn face at full intensity; 0 everywhere is the resting face."""

    # mouth corners up (+) or down (-)
    smile: float
    # mouth opening, 0 closed to 1 wide
    mouth_open: float
    # inner brow ends pulled down and together (frown)
    brow_knit: float
    # both brows and upper lids raised
    brow_raise: float


_FACE_PEAKS: tuple[FaceCues, ...] = (
    FaceCues(0.0, 0.0, 0.0, 0.0),  # resting: neutral/worried
    FaceCues(-1.0, 0.15, 1.0, 0.0),  # frown, knitted brows: angry/sad
    FaceCues(1.0, 0.8, 0.0, 1.0),  # open smile, raised brows: happy/surprise
)
_FACE_JITTER = 0.18


@dataclass(frozen=True)
class _FaceLook:
    """Who is on screen and how the shot moves; nothing here depends on the emotion."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    background: tuple[float, float, float]
    scale: float
    center: tuple[float, float]
    sway: tuple[float, float, float, float]  # x amplitude, y amplitude, frequency Hz, phase
    eye_gap: float
    resting: FaceCues


def face_cues(label: str, strength: float, rng: np.random.Generator) -> FaceCues:
    """Peak expression of `label`'s visual group at `strength`, with clip noise."""
    peak = _FACE_PEAKS[VISUAL_GROUP[label]]
    return FaceCues(
        *(
            strength * getattr(peak, name) + _FACE_JITTER * rng.normal()
            for name in FaceCues.__dataclass_fields__
        )
    )


def _face_look(size: int, rng: np.random.Generator) -> _FaceLook:
    """A random person and shot for a frame side of `size`, independent of the emotion."""
    skin = np.array([150, 175, 215]) * rng.uniform(0.85, 1.1) + rng.normal(0, 8, 3)  # BGR
    return _FaceLook(
        skin=tuple(np.clip(skin, 60, 250)),
        hair=tuple(rng.uniform(15, 70, 3)),
        background=tuple(rng.uniform(60, 170, 3)),
        scale=rng.uniform(0.88, 1.08),
        center=(size / 2 + rng.uniform(-6, 6) * size / 160, size / 2 + rng.uniform(-5, 5) * size / 160),
        sway=(rng.uniform(0, 4), rng.uniform(0, 3), rng.uniform(0.2, 0.8), rng.uniform(0, 2 * np.pi)),
        eye_gap=rng.uniform(15, 19),
        resting=FaceCues(*rng.normal(0, 0.12, 4)),
    )


def _draw_face(
    look: _FaceLook, cues: FaceCues, size: int, dx: float, dy: float, noise: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """One BGR uint8 frame of a frontal face that Haar finds (dark eye band under brows, lighter bridge)."""
    img = _canvas(size, look.background)
    # plain floats: builtin round() on numpy scalars costs ten times more, and this runs ~30 times a frame
    s = float(size / 160 * look.scale)
    cx, cy = float(look.center[0] + dx), float(look.center[1] + dy)
    cues = FaceCues(*(float(v) for v in (cues.smile, cues.mouth_open, cues.brow_knit, cues.brow_raise)))

    def at(x: float, y: float) -> tuple[int, int]:
        return int(round(cx + x * s)), int(round(cy + y * s))

    def px(v: float) -> int:
        return max(1, int(round(v * s)))

    skin = look.skin
    shade = tuple(c * 0.78 for c in skin)
    cv2.ellipse(img, at(0, -8), (px(50), px(62)), 0, 0, 360, look.hair, -1, cv2.LINE_AA)
    cv2.ellipse(img, at(0, 4), (px(42), px(54)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    lid = 5 + 1.5 * cues.brow_raise
    for side in (-1, 1):
        eye_x = side * look.eye_gap
        cv2.ellipse(img, at(eye_x, -8), (px(9), px(max(lid, 3))), 0, 0, 360, (60, 60, 70), -1, cv2.LINE_AA)
        cv2.circle(img, at(eye_x, -8), px(3), (20, 20, 20), -1, cv2.LINE_AA)
        # a knit pulls the inner end down (V-shaped brows); a raise lifts the whole brow
        inner = at(side * 8, -19 + 5 * cues.brow_knit - 5 * cues.brow_raise)
        outer = at(side * 27, -19 - 2 * cues.brow_knit - 4 * cues.brow_raise)
        cv2.line(img, inner, outer, (30, 30, 40), px(4), cv2.LINE_AA)
    cv2.line(img, at(0, -6), at(-3, 12), shade, px(2), cv2.LINE_AA)
    cv2.ellipse(img, at(0, 13), (px(6), px(3)), 0, 0, 360, tuple(c * 0.7 for c in skin), -1, cv2.LINE_AA)
    # mouth: a parabola bent by the smile, opened into a dark lens
    xs = np.linspace(-15 - 2 * max(cues.smile, 0), 15 + 2 * max(cues.smile, 0), 21)
    ys = 28 - 6 * cues.smile * (1 - (xs / xs[-1]) ** 2)
    opening = max(cues.mouth_open, 0.0)
    top = np.stack([cx + xs * s, cy + (ys - opening * 4) * s], axis=1)
    bottom = np.stack([cx + xs * s, cy + (ys + 1.5 + opening * 9) * s], axis=1)[::-1]
    cv2.fillPoly(img, [np.concatenate([top, bottom]).round().astype(np.int32)], (40, 30, 110), cv2.LINE_AA)
    cv2.polylines(img, [top.round().astype(np.int32)], False, (40, 30, 90), px(2), cv2.LINE_AA)
    return _add_noise(img, noise)


def _canvas(size: int, colour: tuple[float, float, float]) -> np.ndarray:
    """A (size, size, 3) uint8 image of one BGR colour (cv2 fills it ten times faster than numpy)."""
    img = np.empty((size, size, 3), np.uint8)
    cv2.rectangle(img, (0, 0), (size, size), colour, -1)
    return img


def _add_noise(img: np.ndarray, noise: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """uint8 `img` plus the (positive, negative) uint8 parts of a noise field, saturated."""
    return cv2.subtract(cv2.add(img, noise[0]), noise[1])


def _draw_scene(size: int, rng: np.random.Generator) -> np.ndarray:
    """A shot with nobody in it: a wall with a light gradient, a table top and one vase.

    Deliberately free of paired dark blobs: 2,000 noisy frames of it gave no Haar detection.
    """
    wall = np.linspace(1.1, 0.85, size)[:, None, None] * rng.uniform(70, 170, 3)[None, None, :]
    img = np.ascontiguousarray(np.repeat(wall, size, axis=1).clip(0, 255).astype(np.uint8))
    cv2.rectangle(img, (0, int(size * 0.72)), (size, size), tuple(rng.uniform(40, 120, 3)), -1)
    x = int(size * rng.uniform(0.2, 0.6))
    vase = (x, int(size * 0.45)), (x + int(size * 0.18), int(size * 0.72))
    cv2.rectangle(img, *vase, tuple(rng.uniform(0, 255, 3)), -1)
    return img


def render_frames(
    label: str,
    strength: float,
    rng: np.random.Generator,
    size: int = 160,
    seconds: float = 2.0,
    fps: int = 10,
    face: bool = True,
) -> list[np.ndarray]:
    """Frames of one clip: a face moving from rest toward `label`'s peak expression and back, or (face=False)
    a shot with nobody in it.

    Returns round(seconds * fps) (size, size, 3) uint8 BGR frames.
    """
    count = max(1, int(round(seconds * fps)))
    times = [i / fps for i in range(count)]
    # sensor noise: each frame crops a random window of one larger noise field (cheaper than fresh noise)
    margin = 16
    noise_field = np.round(rng.normal(0, 4, (size + margin, size + margin, 3)))
    rises, falls = np.maximum(noise_field, 0).astype(np.uint8), np.maximum(-noise_field, 0).astype(np.uint8)

    def noise() -> tuple[np.ndarray, np.ndarray]:
        x, y = rng.integers(0, margin, 2)
        window = np.s_[y : y + size, x : x + size]
        return np.ascontiguousarray(rises[window]), np.ascontiguousarray(falls[window])

    frames = []
    if not face:
        scene = _draw_scene(size, rng)
        for t in times:
            # the camera pans a little
            img = np.roll(scene, int(round(3 * math.sin(2 * math.pi * 0.5 * t))), axis=1)
            frames.append(_add_noise(img, noise()))
        return frames
    look = _face_look(size, rng)
    peak = face_cues(label, strength, rng)
    # expression time course: a bump from rest to the peak and back, its window partly off the clip's ends
    start = rng.uniform(-0.35, 0.05) * seconds
    stop = rng.uniform(0.95, 1.35) * seconds
    amp_x, amp_y, freq, phase = look.sway
    for t in times:
        weight = math.sin(math.pi * min(max((t - start) / (stop - start), 0.0), 1.0)) ** 0.5
        cues = FaceCues(
            *(
                getattr(look.resting, name) + weight * getattr(peak, name)
                for name in FaceCues.__dataclass_fields__
            )
        )
        dx = amp_x * math.sin(2 * math.pi * freq * t + phase) * size / 160
        dy = amp_y * math.sin(2 * math.pi * freq * 0.7 * t + phase * 1.3) * size / 160
        frames.append(_draw_face(look, cues, size, dx, dy, noise()))
    return frames
