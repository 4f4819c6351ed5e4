"""Key frames for the report's clip table: one JPEG per clip, the face crop when a face is found.

Usage:
    written = key_frames({"samplenew3_00000001": Path(".../samplenew3_00000001.mp4")}, out / "frames", side=96)
    written["samplenew3_00000001"]     # "frames/samplenew3_00000001.jpg", relative to the report folder

The frame is the one in the middle of the clip (a seek, then the first frame decoded: a 5 s 720p clip costs one
GOP, not the whole video); the face is found by the project's BlazeFace detector (clips.faces), and the crop is a
square 1.6 face-widths wide. A clip that cannot be decoded gets no frame; the page shows its status instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av
import cv2
import numpy as np

from clips.faces import BlazeFaceDetector
from clips.io import atomic_write_bytes, check_name
from clips.media import fit_frames

log = logging.getLogger(__name__)


def middle_frame(path: Path, max_side: int = 640) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB frame from the middle of the video at `path`, shrunk to `max_side`; None without video
    or when nothing decodes."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            middle = None
            if stream.duration and stream.time_base:
                middle = stream.duration // 2
                container.seek(int(middle), stream=stream)
            frame = None
            for decoded in container.decode(stream):
                frame = decoded
                # the seek lands on the key frame before the middle: decode on up to the middle
                if middle is None or decoded.pts is None or decoded.pts >= middle:
                    break
            if frame is None:
                return None
            return fit_frames(frame.to_ndarray(format="rgb24")[None], max_side)[0]
    except (av.error.FFmpegError, OSError, ValueError) as err:
        log.debug("no key frame from %s: %s", path, err)
        return None


def face_crop(frame: np.ndarray, detector: BlazeFaceDetector) -> np.ndarray | None:
    """The square around the face the detector finds in `frame`, or None when it finds none."""
    face = detector.detect(frame[None])[0]
    if face is None:
        return None
    x, y, w, h = face.box
    side = int(1.6 * max(w, h))
    cx, cy = x + w // 2, y + h // 2
    height, width = frame.shape[:2]
    x0, y0 = max(cx - side // 2, 0), max(cy - side // 2, 0)
    x1, y1 = min(x0 + side, width), min(y0 + side, height)
    return frame[y0:y1, x0:x1] if x1 - x0 > 4 and y1 - y0 > 4 else None


def key_frames(media: dict[str, Path], folder: Path, side: int = 96) -> dict[str, tuple[str, bool]]:
    """Write `folder`/<name>.jpg for each clip of `media` (name -> file); returns name -> (path relative to the
    folder's parent, whether it is a face crop) for the clips that got one."""
    detector = BlazeFaceDetector()
    written: dict[str, tuple[str, bool]] = {}
    for name, path in media.items():
        frame = middle_frame(path)
        if frame is None:
            continue
        crop = face_crop(frame, detector)
        image = crop if crop is not None else frame
        scale = side / max(image.shape[:2])
        image = cv2.resize(image, (max(int(image.shape[1] * scale), 1), max(int(image.shape[0] * scale), 1)),
                           interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 82])
        if not ok:
            continue
        target = Path(folder) / f"{check_name(name)}.jpg"
        atomic_write_bytes(target, jpeg.tobytes())
        written[name] = (f"{Path(folder).name}/{target.name}", crop is not None)
    return written
