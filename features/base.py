"""The extractor contract: one utterance-level vector per clip and modality, and its settings' cache key.

Usage:
    class MyExtractor:                       # satisfies Extractor
        name = "mine"; modality = "audio"; dim = 16
        def settings(self) -> dict: return {"window": 0.5}
        def extract(self, clip, transcript) -> FeatureResult: ...
    key = cache_key(MyExtractor())           # "mine-3f2a9c1d": the cache folder of these settings
Missing modalities are a FeatureResult with vector None and a flag from clips.status.STATUSES.
A visual extractor may declare `frame_side`, the long side in pixels of the frames it wants; the runner decodes at
the largest any extractor of a run asks for and hands each extractor frames no larger than its own
(clips.media.fit_frames).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from clips.media import FRAME_SCALING, DecodedClip

Modality = Literal["audio", "visual", "text"]

# The clip flag an extractor reports when its modality is absent, or when it failed on the clip: the effect
# downstream is the same (the modality is missing), and the error message itself is kept in the cache file.
MISSING_STATUS: dict[str, str] = {"audio": "no_audio", "visual": "no_video", "text": "empty_transcript"}
# long side in pixels of the frames an extractor gets when it declares no `frame_side`
DEFAULT_FRAME_SIDE = 320
# decode_clip options of feature extraction: without the deblocking filter H.264 decodes about a sixth faster, and
# the face vector moves by no more than re-encoding the clip at 1.6 instead of 2 Mbit/s moves it (bench clips)
FEATURE_DECODE: dict = {"deblock": False}


@dataclass
class FeatureResult:
    """What one extractor made of one clip."""

    # (dim,) float32, or None when the modality is missing
    vector: np.ndarray | None
    # flags from clips.status.STATUSES, e.g. ("no_face",); () when fine
    status: tuple[str, ...] = ()


@runtime_checkable
class Extractor(Protocol):
    """An utterance-level feature extractor; builds cheaply and loads any model on its first extract()."""

    # registry name, e.g. "egemaps"
    name: str
    modality: Modality
    # length of the vector extract() returns
    dim: int

    def settings(self) -> dict:
        """JSON-serialisable description of all that changes the output (model path, layers, frames)."""
        ...

    def extract(self, clip: DecodedClip, transcript: str | None) -> FeatureResult:
        """The clip's vector, or a missing result with a status flag; may raise on a broken clip."""
        ...


def settings_hash(settings: dict) -> str:
    """8 hex digits of SHA-1 over the canonical JSON of `settings` (sorted keys)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def cache_key(extractor: Extractor) -> str:
    """Cache folder name of `extractor`: name and a hash of settings and dim, e.g. "egemaps-3f2a9c1d".

    A visual extractor's key also holds how the decoder makes frames (FRAME_SCALING, FEATURE_DECODE), so cached
    vectors of another decoding are recomputed rather than mixed with new ones.
    """
    decoding = {"frame_scaling": FRAME_SCALING, **FEATURE_DECODE} if extractor.modality == "visual" else {}
    return f"{extractor.name}-{settings_hash({'dim': extractor.dim, **decoding, **extractor.settings()})}"


def missing(modality: Modality, *extra: str) -> FeatureResult:
    """A missing result flagged with the modality's absence flag (and any `extra` flags)."""
    return FeatureResult(vector=None, status=(MISSING_STATUS[modality], *extra))


def finite_vector(values: np.ndarray, dim: int) -> np.ndarray:
    """`values` flattened to a (dim,) float32 vector with non-finite entries replaced by 0.

    Raises:
        ValueError: when `values` does not hold exactly `dim` numbers.
    """
    vector = np.asarray(values, dtype=np.float32).reshape(-1)
    if vector.shape != (dim,):
        raise ValueError(f"extractor produced {vector.shape[0]} values, expected dim {dim}")
    return np.nan_to_num(vector, nan=0.0, posinf=0.0, neginf=0.0)


def frame_side(extractor: Extractor) -> int:
    """Long side in pixels of the frames `extractor` wants: its `frame_side`, else DEFAULT_FRAME_SIDE."""
    return int(getattr(extractor, "frame_side", DEFAULT_FRAME_SIDE))

