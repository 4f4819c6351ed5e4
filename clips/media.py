"""Decoding of clips with PyAV: 16 kHz mono audio and uniformly sampled RGB frames, bounded memory.

Usage:
    clip = decode_clip(Path("video-labeled/sample_00000001.mp4"), name="sample_00000001", num_frames=8)
    clip.audio        # (samples,) float32 at 16 kHz, or None
    clip.frames       # (T, H, W, 3) uint8 RGB, or None
    clip.status       # () when fine, else flags from clips.status.STATUSES
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm")
MEDIA_SUFFIXES = VIDEO_SUFFIXES + AUDIO_SUFFIXES


@dataclass
class DecodedClip:
    """One clip's decoded media and what went wrong with it."""

    # clip name (file stem)
    name: str
    # (samples,) float32 mono at SAMPLE_RATE; None when there is no usable audio
    audio: np.ndarray | None
    # (T, H, W, 3) uint8 RGB frames sampled uniformly over the decoded duration; None without video
    frames: np.ndarray | None
    # (T,) time in seconds of each sampled frame
    frame_times: np.ndarray | None
    # seconds actually decoded (not the container's claim)
    duration: float
    # flags from clips.status.STATUSES; () when fine
    status: tuple[str, ...] = ()
    # the decoder's error message when something failed
    error: str | None = None
    # free-form facts about decoding (claimed duration, source fps, ...)
    info: dict = field(default_factory=dict)


def decode_clip(
    path: Path,
    name: str | None = None,
    num_frames: int = 8,
    max_seconds: float = 30.0,
    max_side: int = 320,
) -> DecodedClip:
    """Decode `path`; never raises for a bad file, returns status flags instead."""
    raise NotImplementedError
