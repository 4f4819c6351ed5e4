"""What an LLM teacher sees of a decoded clip: audio, frames, face crops, both, or the transcript.

Usage:
    media = clip_media(decode_clip(path, num_frames=8), view="face", transcript=ref.transcript)
    media.frames         # (T, 224, 224, 3) face crops, or None when no frame has a face

Face crops use OpenCV's bundled frontal Haar cascade (no download); the largest face of each frame is cut with a
margin and resized to a square. Frames without a face are dropped; a clip with no face at all has no "face" media.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from clips.media import DecodedClip
from llm.requests import ClipMedia

FACE_SIZE = 224
# share of the face box added on each side: the brows and chin carry expression
FACE_MARGIN = 0.2


@lru_cache(maxsize=1)
def _face_cascade():
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    if cascade.empty():
        raise RuntimeError("OpenCV's haarcascade_frontalface_default.xml did not load; install "
                           "opencv-python-headless<5 (5.x ships no Haar cascades)")
    return cascade


def face_crops(frames: np.ndarray, size: int = FACE_SIZE) -> np.ndarray | None:
    """(T, H, W, 3) RGB frames -> (T', size, size, 3) crops of the largest face per frame; None when no face."""
    import cv2

    crops = []
    for frame in frames:
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        boxes = _face_cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        if len(boxes) == 0:
            continue
        x, y, w, h = max(boxes, key=lambda b: b[2] * b[3])
        pad_x, pad_y = int(w * FACE_MARGIN), int(h * FACE_MARGIN)
        top, bottom = max(0, y - pad_y), min(frame.shape[0], y + h + pad_y)
        left, right = max(0, x - pad_x), min(frame.shape[1], x + w + pad_x)
        crops.append(cv2.resize(frame[top:bottom, left:right], (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(crops) if crops else None


def view_media(name: str, decoded, view: str, transcript: str | None = None) -> ClipMedia:
    """The ClipMedia of llm.decoded.DecodedMedia for `view` (its face crops for "face")."""
    frames = decoded.faces if view == "face" else decoded.frames
    return ClipMedia(name=name, audio=decoded.audio, frames=frames, transcript=transcript, duration=decoded.duration)


def clip_media(clip: DecodedClip, view: str, transcript: str | None = None) -> ClipMedia:
    """The ClipMedia of a decoded clip for `view` (frames become face crops for "face")."""
    frames = clip.frames
    if view == "face" and frames is not None:
        frames = face_crops(frames)
    return ClipMedia(name=clip.name, audio=clip.audio, frames=frames, transcript=transcript, duration=clip.duration)
