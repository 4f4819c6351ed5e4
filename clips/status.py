"""Per-clip status flags that decoding and feature extraction set and later stages read.

A clip's status is a tuple of flags; the empty tuple means the clip is fine ("ok" when written out).
Usage:
    status = merge_status(decoded.status, ("no_face",))
    text = format_status(status)        # "no_audio;no_face" or "ok"
"""

from __future__ import annotations

import functools

STATUSES: tuple[str, ...] = (
    "ok",
    "no_audio",          # no audio stream, or it decodes to nothing
    "no_video",          # no video stream (audio-only mp4, wav, ...)
    "no_face",           # video present but no face found on any sampled frame
    "empty_transcript",  # transcript missing, empty or garbage
    "unreadable",        # the file cannot be opened or decoded at all
    "no_media",          # the name has no media file
    "truncated",         # decoding stopped early on an error; what decoded is kept
    "asr_transcript",    # the clip had no usable transcript; the text features read Whisper's ASR of its audio
)


def merge_status(*parts: tuple[str, ...]) -> tuple[str, ...]:
    """Union of flags in STATUSES order, without "ok"."""
    flags = {flag for part in parts for flag in part if flag != "ok"}
    unknown = flags - set(STATUSES)
    if unknown:
        raise ValueError(f"unknown clip status {sorted(unknown)}: expected flags from {STATUSES}")
    return tuple(s for s in STATUSES if s in flags)


def format_status(status: tuple[str, ...]) -> str:
    """';'-joined flags, or "ok" for a clean clip."""
    return ";".join(status) if status else "ok"


@functools.lru_cache(maxsize=1024)
def parse_status(text: str) -> tuple[str, ...]:
    """Inverse of format_status; cached because 120,000 clips share a handful of status strings."""
    return merge_status(tuple(part for part in text.strip().split(";") if part))
