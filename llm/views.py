"""What an LLM teacher sees of a decoded clip: audio, frames, face crops, both, or the transcript.

Usage:
    media = clip_media(decode_clip(path, num_frames=8, max_side=960), view="face", transcript=ref.transcript)
    media.frames         # (T, 224, 224, 3) face crops, or None when no frame has a face

Faces come from clips.faces (BlazeFace, the face tracked across the clip's frames, as feature extraction finds it);
each is cut as a square around the face box with a margin for brows and chin, and resized. Frames without a face
are dropped; a clip with no face at all has no "face" media. Faces in wide shots are a few dozen pixels at the
LLM's frame size, so the face view decodes frames at FACE_FRAME_SIDE (llm.decoded does) and crops from those.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from clips.media import DecodedClip
from llm.requests import ClipMedia

FACE_SIZE = 224
# share of the face box's side added on each side: BlazeFace boxes run from brows to chin, expression needs both
FACE_MARGIN = 0.25
# long side of the frames faces are found and cut in: a face 1/20 of a 720p frame is 48 pixels wide there
FACE_FRAME_SIDE = 960


@lru_cache(maxsize=1)
def _detector():
    from clips.faces import BlazeFaceDetector

    return BlazeFaceDetector()


def face_crops(frames: np.ndarray, size: int = FACE_SIZE) -> np.ndarray | None:
    """(T, H, W, 3) RGB frames -> (T', size, size, 3) crops of the tracked face per frame; None when no face.

    The square is clipped to the frame (a face at the border gives a rectangle, resized to the square).
    """
    import cv2

    crops = []
    for frame, face in zip(frames, _detector().detect(frames), strict=True):
        if face is None:
            continue
        x, y, w, h = face.box
        half = max(w, h) * (0.5 + FACE_MARGIN)
        cx, cy = x + w / 2, y + h / 2
        top, bottom = int(max(0, cy - half)), int(min(frame.shape[0], cy + half))
        left, right = int(max(0, cx - half)), int(min(frame.shape[1], cx + half))
        if bottom - top < 2 or right - left < 2:
            continue
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
