"""Decode each clip once, ahead of the scorer: worker processes fill a cache of decoded media all LLM agents share.

Usage:
    settings = DecodeSettings(num_frames=8, max_seconds=30.0, frame_side=448, faces=True)
    cache = DecodedCache(Path("runs/a/decoded"), settings, workers=2)        # folder None: no disk cache
    for ref, media in zip(refs, cache.iter_media(refs)):                    # in order, decoded `ahead` clips early
        media.audio, media.frames, media.faces, media.duration               # None where the clip has none

Decoding a 720p clip costs about as much CPU as scoring it (H.264 decode, resampling, the face detector), and
every LLM agent of a run reads the same clips: each clip is decoded once into `<folder>/<settings key>/<name>-<file
key>.npz` (16 kHz audio, the sampled frames, their face crops, the duration) by a pool of worker processes that
runs ahead of the model, and every later agent, and teacher-train, reads that file instead. The settings key
changes with any decode setting; the file key with the media file's path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clips.dataset import ClipRef
from clips.io import atomic_save_npz, load_npz
from clips.media import FRAME_SCALING, decode_clip, fit_frames


@dataclass(frozen=True)
class DecodeSettings:
    """What decoding produces; part of the cache key."""

    # frames sampled uniformly per clip
    num_frames: int = 8
    # longest audio kept, in seconds
    max_seconds: float = 30.0
    # longer side of the decoded frames in pixels
    frame_side: int = 448
    # also cut face crops (the "face" view)
    faces: bool = False

    def key(self) -> str:
        # the decoder's resize filter changes frames, and the face detector the crops
        described = {**asdict(self), "frame_scaling": FRAME_SCALING, "faces_by": "blazeface" if self.faces else None}
        return hashlib.sha1(json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class DecodedMedia:
    """One clip's decoded media."""

    # (samples,) float32 at 16 kHz, or None
    audio: np.ndarray | None
    # (T, H, W, 3) uint8 RGB, or None
    frames: np.ndarray | None
    # (T', 224, 224, 3) uint8 face crops, or None (not asked for, or no face found)
    faces: np.ndarray | None
    # seconds decoded
    duration: float


def decode_media(ref: ClipRef, settings: DecodeSettings) -> DecodedMedia | None:
    """Decode one clip's file (None when it has none)."""
    if ref.path is None:
        return None
    from llm.views import FACE_FRAME_SIDE, face_crops

    # faces are found and cut on larger frames than the frames view shows: in a wide shot they are small
    side = max(settings.frame_side, FACE_FRAME_SIDE) if settings.faces else settings.frame_side
    clip = decode_clip(Path(ref.path), name=ref.name, num_frames=settings.num_frames,
                       max_seconds=settings.max_seconds, max_side=side)
    frames, faces = clip.frames, None
    if frames is not None and settings.faces:
        faces = face_crops(frames)
        frames = fit_frames(frames, settings.frame_side)
    return DecodedMedia(audio=clip.audio, frames=frames, faces=faces, duration=float(clip.duration))


def _file_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:10]


def cached_media(ref: ClipRef, settings: DecodeSettings, folder: Path | None) -> DecodedMedia | None:
    """The clip's media from `folder` when decoded before, else decoded now and stored there (a worker's job)."""
    if folder is None or ref.path is None or not Path(ref.path).is_file():
        return decode_media(ref, settings)
    path = Path(folder) / settings.key() / f"{ref.name}-{_file_key(Path(ref.path))}.npz"
    if path.is_file():
        data = load_npz(path)
        return DecodedMedia(audio=data.get("audio"), frames=data.get("frames"), faces=data.get("faces"),
                            duration=float(data["duration"]))
    media = decode_media(ref, settings)
    arrays = {k: v for k, v in (("audio", media.audio), ("frames", media.frames), ("faces", media.faces))
              if v is not None}
    atomic_save_npz(path, duration=np.float64(media.duration), **arrays)
    return media


def prefetch(fn: Callable, items: Iterable, workers: int, ahead: int) -> Iterator:
    """fn(item) for each item, in order, computed by `workers` processes up to `ahead` items before it is read
    (workers 0: here, one by one). Memory holds at most `ahead` results."""
    if workers <= 0:
        yield from map(fn, items)
        return
    items = iter(items)
    # spawn, not fork: the scoring process holds torch (maybe CUDA) and OpenMP threads, which a forked child
    # inherits broken; `fn` and the items must therefore be picklable
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = deque(pool.submit(fn, item) for _, item in zip(range(max(1, ahead)), items, strict=False))
        while pending:
            result = pending.popleft().result()
            following = next(items, None)
            if following is not None:
                pending.append(pool.submit(fn, following))
            yield result


class DecodedCache:
    """Decoded media of clips under one set of DecodeSettings, read from disk or decoded by worker processes."""

    def __init__(self, folder: Path | None, settings: DecodeSettings, workers: int = 2, ahead: int = 32):
        self.folder = Path(folder) if folder is not None else None
        self.settings = settings
        self.workers = workers
        self.ahead = ahead

    def media(self, ref: ClipRef) -> DecodedMedia | None:
        """One clip's media, in this process."""
        return cached_media(ref, self.settings, self.folder)

    def iter_media(self, refs: Iterable[ClipRef]) -> Iterator[DecodedMedia | None]:
        """Each clip's media in order; worker processes decode ahead of the reader."""
        yield from prefetch(_Job(self.settings, self.folder), refs, self.workers, self.ahead)


@dataclass(frozen=True)
class _Job:
    """A picklable cached_media call for the worker processes."""

    settings: DecodeSettings
    folder: Path | None

    def __call__(self, ref: ClipRef) -> DecodedMedia | None:
        return cached_media(ref, self.settings, self.folder)
