"""Embedded visual extractor: faces found on real-size frames, classical face features and facial expression.

Usage:
    extractor = FaceExtractor(num_frames=8)             # BlazeFace on frames of up to 960 pixels
    result = extractor.extract(clip, transcript=None)   # (FACE_DIM,) float32; status ("no_face",) on fallback
    boxes, profiles = FaceDetector().detect(frames)     # the Haar detector: largest face per frame, or None
    vector = face_features(clip.frames, boxes)          # the appearance layout for boxes you got elsewhere

Layout of the vector (FACE_LAYOUT gives the slices):
    geometry   detection rate, profile rate, face width, centre x/y (mean and std over frames with a face)
    appearance mean over face frames of the 64x64 gray crop's HOG (whole face 4x4 cells, and the upper
               (brows/eyes) and lower (mouth) halves with finer 8x16 cells) and uniform LBP histogram
    scalars    mean and std over frames of crop brightness, contrast and upper/lower edge energy
    motion     frame-to-frame change of the crop (whole, upper, lower), of the face centre and of the frame
    expression FER2013 probabilities (mean, max, peak frame) and keypoint pose (features.expression)
Faces come from BlazeFace (clips.faces), with the Haar cascades as the fallback on frames where it finds
none ("haar" uses the cascades alone). With no face on any frame the appearance parts are computed on the whole
frames, geometry says "no detection", expression is zero and the status is ("no_face",); with no frames the
result is missing ("no_video").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from clips.faces import BlazeFaceDetector, Face
from clips.media import DecodedClip, fit_frames
from features.base import FeatureResult, finite_vector, missing
from features.expression import EXPRESSION_DIM, ExpressionModels, expression_features

Box = tuple[int, int, int, int]

CROP_SIZE = 64
# (rows, cols, bins) of the HOG grids: the whole crop in 16x16 cells, each 32x64 half in 8x16 cells
FACE_HOG = (4, 4, 9)
HALF_HOG = (4, 4, 8)
# 58 uniform 8-neighbour LBP patterns plus one bin for all the others
LBP_BINS = 59
_GEOMETRY = (
    "detection_rate",
    "profile_rate",
    "width_mean",
    "width_std",
    "cx_mean",
    "cx_std",
    "cy_mean",
    "cy_std",
)
_SCALARS = ("brightness", "contrast", "edges_upper", "edges_lower")
_MOTION = (
    "crop_diff_mean",
    "crop_diff_max",
    "upper_diff_mean",
    "upper_diff_max",
    "lower_diff_mean",
    "lower_diff_max",
    "centre_shift_mean",
    "frame_diff_mean",
    "frame_diff_max",
)
_APPEARANCE_DIM = int(np.prod(FACE_HOG) + 2 * np.prod(HALF_HOG) + LBP_BINS)


def _layout() -> dict[str, slice]:
    sizes = {
        "geometry": len(_GEOMETRY),
        "appearance": _APPEARANCE_DIM,
        "scalars": 2 * len(_SCALARS),
        "motion": len(_MOTION),
        "expression": EXPRESSION_DIM,
    }
    out, start = {}, 0
    for part, size in sizes.items():
        out[part] = slice(start, start + size)
        start += size
    return out


FACE_LAYOUT: dict[str, slice] = _layout()
FACE_DIM = FACE_LAYOUT["expression"].stop
# the appearance parts that face_features() computes
FACE_FEATURES_DIM = FACE_LAYOUT["motion"].stop


def _uniform_lbp_table() -> np.ndarray:
    """(256,) bin of each 8-bit LBP code: 0..57 for uniform patterns (<= 2 transitions), 58 for the rest."""
    table = np.full(256, LBP_BINS - 1, dtype=np.int64)
    next_bin = 0
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        if sum(bits[i] != bits[(i + 1) % 8] for i in range(8)) <= 2:
            table[code] = next_bin
            next_bin += 1
    return table


_LBP_TABLE = _uniform_lbp_table()


def hog_cells(gray: np.ndarray, rows: int, cols: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Unsigned-orientation gradient histograms of `gray` (H, W) on a rows x cols grid of cells.

    Returns:
        (rows * cols * bins,) L2-Hys normalised histogram and the (H, W) gradient magnitude.
    """
    image = gray.astype(np.float32)
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=1)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=1)
    magnitude, angle = cv2.cartToPolar(gx, gy, angleInDegrees=True)
    orientation = np.minimum((np.mod(angle, 180.0) * (bins / 180.0)).astype(np.int64), bins - 1)
    height, width = image.shape
    cell_row = np.minimum(np.arange(height) * rows // height, rows - 1)
    cell_col = np.minimum(np.arange(width) * cols // width, cols - 1)
    cell = cell_row[:, None] * cols + cell_col[None, :]  # (H, W)
    hist = np.bincount(
        (cell * bins + orientation).ravel(), weights=magnitude.ravel(), minlength=rows * cols * bins
    )
    # L2-Hys: clipping stops a few strong edges (hair, glasses) dominating the descriptor
    hist = hist / (np.linalg.norm(hist) + 1e-6)
    hist = np.minimum(hist, 0.2)
    return hist / (np.linalg.norm(hist) + 1e-6), magnitude


def lbp_histogram(gray: np.ndarray) -> np.ndarray:
    """(LBP_BINS,) normalised histogram of uniform 8-neighbour, radius-1 LBP codes of `gray` (H, W)."""
    image = gray.astype(np.int16)
    centre = image[1:-1, 1:-1]
    offsets = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))
    height, width = image.shape
    codes = np.zeros(centre.shape, dtype=np.int64)
    for bit, (dy, dx) in enumerate(offsets):
        neighbour = image[1 + dy : height - 1 + dy, 1 + dx : width - 1 + dx]
        codes |= (neighbour >= centre).astype(np.int64) << bit
    hist = np.bincount(_LBP_TABLE[codes].ravel(), minlength=LBP_BINS).astype(np.float32)
    return hist / max(hist.sum(), 1.0)


def crop_gray(frame: np.ndarray, box: Box, size: int = CROP_SIZE) -> np.ndarray:
    """(size, size) uint8 gray crop of RGB `frame` (H, W, 3) inside `box` (x, y, w, h), clipped to it."""
    height, width = frame.shape[:2]
    x, y, w, h = box
    x0, y0 = max(int(x), 0), max(int(y), 0)
    x1, y1 = min(int(x + w), width), min(int(y + h), height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"face box {box} lies outside the {width}x{height} frame")
    gray = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)


def crop_descriptor(crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Appearance (_APPEARANCE_DIM,) and scalars (4,) of one (64, 64) uint8 gray crop."""
    half = crop.shape[0] // 2
    face_hog, magnitude = hog_cells(crop, *FACE_HOG)
    upper_hog, _ = hog_cells(crop[:half], *HALF_HOG)
    lower_hog, _ = hog_cells(crop[half:], *HALF_HOG)
    appearance = np.concatenate([face_hog, upper_hog, lower_hog, lbp_histogram(crop)])
    pixels = crop.astype(np.float32) / 255.0
    scalars = np.array(
        [pixels.mean(), pixels.std(), magnitude[:half].mean() / 255.0, magnitude[half:].mean() / 255.0],
        dtype=np.float32,
    )
    return appearance, scalars


def _diff_stats(crops: list[np.ndarray]) -> tuple[float, float]:
    """Mean and max over consecutive pairs of the mean absolute pixel change (0..1); zeros for < 2 crops."""
    if len(crops) < 2:
        return 0.0, 0.0
    stack = np.stack(crops).astype(np.float32) / 255.0  # (T, h, w)
    changes = np.abs(np.diff(stack, axis=0)).mean(axis=(1, 2))  # (T-1,)
    return float(changes.mean()), float(changes.max())


def face_features(
    frames: np.ndarray, boxes: list[Box | None], profile: list[bool] | None = None
) -> np.ndarray:
    """(FACE_FEATURES_DIM,) features of RGB `frames` (T, H, W, 3) given one face box (or None) per frame.

    With no box at all, every whole frame stands in for the face and the detection rate is 0.
    Raises:
        ValueError: when `boxes` does not have one entry per frame.
    """
    if len(boxes) != len(frames):
        raise ValueError(
            f"got {len(boxes)} face boxes for {len(frames)} frames; pass one (or None) per frame"
        )
    height, width = frames.shape[1:3]
    face_idx = [i for i, box in enumerate(boxes) if box is not None]
    found = bool(face_idx)
    if found:
        used = [(frames[i], boxes[i]) for i in face_idx]
    else:
        used = [(frame, (0, 0, width, height)) for frame in frames]
    crops = [crop_gray(frame, box) for frame, box in used]
    descriptors = [crop_descriptor(crop) for crop in crops]
    appearance = np.mean([d[0] for d in descriptors], axis=0)
    scalars = np.stack([d[1] for d in descriptors])  # (faces, 4)

    geo = np.array(
        [[box[2] / width, (box[0] + box[2] / 2) / width, (box[1] + box[3] / 2) / height] for _, box in used]
    )
    profile_flags = [bool(profile[i]) for i in face_idx] if (profile is not None and found) else [False]
    geometry = [
        len(face_idx) / len(frames),
        float(np.mean(profile_flags)),
        geo[:, 0].mean(),
        geo[:, 0].std(),
        geo[:, 1].mean(),
        geo[:, 1].std(),
        geo[:, 2].mean(),
        geo[:, 2].std(),
    ]
    half = CROP_SIZE // 2
    small = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (CROP_SIZE, CROP_SIZE)) for f in frames]
    centre_shift = np.linalg.norm(np.diff(geo[:, 1:], axis=0), axis=1).mean() if len(geo) > 1 else 0.0
    motion = [
        *_diff_stats(crops),
        *_diff_stats([c[:half] for c in crops]),
        *_diff_stats([c[half:] for c in crops]),
        centre_shift,
        *_diff_stats(small),
    ]
    vector = np.concatenate([geometry, appearance, scalars.mean(axis=0), scalars.std(axis=0), motion])
    return finite_vector(vector, FACE_FEATURES_DIM)


@dataclass
class FaceDetector:
    """Largest Haar face per frame, searched first near the previous frame's face (cheaper, steadier)."""

    # frames are shrunk so their longer side is at most this before detection (Haar cost grows with area)
    detect_side: int = 160
    scale_factor: float = 1.1
    min_neighbors: int = 5
    # smallest face, in pixels of the shrunk detection image
    min_size: int = 40
    # try the profile cascade (and its mirror) on frames where no frontal face is found
    profile: bool = True
    _frontal: Any = field(default=None, init=False, repr=False)
    _profile: Any = field(default=None, init=False, repr=False)

    def settings(self) -> dict:
        """The detection parameters (all change which faces are found)."""
        return {
            "detect_side": self.detect_side,
            "scale_factor": self.scale_factor,
            "min_neighbors": self.min_neighbors,
            "min_size": self.min_size,
            "profile": self.profile,
        }

    def _cascades(self) -> tuple[Any, Any]:
        if self._frontal is None:
            self._frontal = _load_cascade("haarcascade_frontalface_default.xml")
            self._profile = _load_cascade("haarcascade_profileface.xml") if self.profile else None
        return self._frontal, self._profile

    def _search(self, cascade: Any, gray: np.ndarray, min_size: int, max_size: int = 0) -> Box | None:
        found = cascade.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_size, min_size),
            maxSize=(max_size, max_size),
        )
        if len(found) == 0:
            return None
        x, y, w, h = max(found, key=lambda b: b[2] * b[3])
        return int(x), int(y), int(w), int(h)

    def _detect_one(self, gray: np.ndarray, previous: Box | None) -> tuple[Box | None, bool]:
        frontal, profile = self._cascades()
        height, width = gray.shape
        if previous is not None:
            x, y, w, h = previous
            x0, y0 = max(x - w // 4, 0), max(y - h // 4, 0)
            roi = gray[y0 : min(y + h + h // 4, height), x0 : min(x + w + w // 4, width)]
            box = self._search(frontal, roi, max(self.min_size, int(0.75 * w)), int(1.33 * w) + 1)
            if box is not None:
                return (box[0] + x0, box[1] + y0, box[2], box[3]), False
        box = self._search(frontal, gray, self.min_size)
        if box is not None or profile is None:
            return box, False
        box = self._search(profile, gray, self.min_size)
        if box is None:
            # the profile cascade only knows faces turned one way; the mirror image finds the other way
            mirrored = self._search(profile, np.ascontiguousarray(gray[:, ::-1]), self.min_size)
            if mirrored is not None:
                box = (width - mirrored[0] - mirrored[2], mirrored[1], mirrored[2], mirrored[3])
        return box, box is not None

    def detect(self, frames: np.ndarray) -> tuple[list[Box | None], list[bool]]:
        """Largest face box (x, y, w, h) in pixels (or None) per RGB frame (T, H, W, 3); profile flags."""
        height, width = frames.shape[1:3]
        scale = min(1.0, self.detect_side / max(height, width))
        size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
        boxes: list[Box | None] = []
        profiles: list[bool] = []
        previous: Box | None = None
        for frame in frames:
            gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
            if scale < 1.0:
                gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
            box, is_profile = self._detect_one(gray, previous)
            previous = box
            profiles.append(is_profile)
            boxes.append(None if box is None else tuple(int(round(v / scale)) for v in box))
        return boxes, profiles


def _load_cascade(file_name: str) -> Any:
    """A Haar cascade shipped with opencv-python; raises RuntimeError when OpenCV lacks it (OpenCV 5)."""
    if not hasattr(cv2, "CascadeClassifier"):
        raise RuntimeError(
            "this OpenCV has no CascadeClassifier (OpenCV 5); install opencv-python-headless<5"
        )
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + file_name)
    if cascade.empty():
        raise RuntimeError(
            f"Haar cascade {file_name} not found in {cv2.data.haarcascades}; reinstall OpenCV 4"
        )
    return cascade


@dataclass
class FaceExtractor:
    """Faces per frame (BlazeFace, Haar fallback), face_features() and expression_features(); see the module."""

    # frames the decoder samples per clip (part of the settings: it changes the averages)
    num_frames: int = 8
    # frames are used at most this many pixels on their long side (the runner decodes at this size): a face in a
    # wide shot of a 1280x720 clip is 50-100 pixels wide, a few dozen at the old 320
    frame_side: int = 960
    # "blazeface": BlazeFace with the Haar cascades on frames where it finds nothing; "haar": the cascades alone
    detector: Literal["blazeface", "haar"] = "blazeface"
    # BlazeFace: minimum score, and how many frames of a clip may get the tile search for small faces
    min_score: float = 0.5
    tile_frames: int = 3
    # the Haar cascades (see FaceDetector)
    detect_side: int = 160
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size: int = 40
    profile: bool = True
    name: str = field(default="face", init=False)
    modality: str = field(default="visual", init=False)
    dim: int = field(default=FACE_DIM, init=False)
    haar: FaceDetector = field(init=False, repr=False)
    blazeface: BlazeFaceDetector | None = field(init=False, repr=False)
    models: ExpressionModels = field(default_factory=ExpressionModels, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.detector not in ("blazeface", "haar"):
            raise ValueError(f"face option detector={self.detector!r} is unknown; use 'blazeface' or 'haar'")
        if self.frame_side < 64:
            raise ValueError(f"face option frame_side={self.frame_side}: use at least 64 pixels (e.g. 960)")
        self.haar = FaceDetector(
            detect_side=self.detect_side,
            scale_factor=self.scale_factor,
            min_neighbors=self.min_neighbors,
            min_size=self.min_size,
            profile=self.profile,
        )
        self.blazeface = (
            BlazeFaceDetector(min_score=self.min_score, tile_frames=self.tile_frames)
            if self.detector == "blazeface"
            else None
        )

    def settings(self) -> dict:
        """Frames per clip and their size, the detectors' parameters, the feature layout and the FER model."""
        blazeface = self.blazeface.settings() if self.blazeface is not None else {"detector": "haar"}
        return {"num_frames": self.num_frames, "frame_side": self.frame_side, **blazeface, **self.haar.settings(),
                "crop": CROP_SIZE, "layout": "v2",
                "expression": "fer2013-mini-xception-q8, mediapipe face mesh 468"}

    def faces(self, frames: np.ndarray) -> tuple[list[Face | None], list[bool]]:
        """One face (or None) per RGB frame and whether the Haar profile cascade found it."""
        found: list[Face | None] = [None] * len(frames)
        if self.blazeface is not None:
            found = self.blazeface.detect(frames)
        missed = [i for i, face in enumerate(found) if face is None]
        profiles = [False] * len(frames)
        if missed:
            boxes, flags = self.haar.detect(frames[missed])
            for i, box, flag in zip(missed, boxes, flags, strict=True):
                if box is not None:
                    found[i], profiles[i] = Face(box, np.zeros((0, 2), np.float32), 0.0), flag
        return found, profiles

    def extract(self, clip: DecodedClip, transcript: str | None) -> FeatureResult:
        """(FACE_DIM,) face features; ("no_face",) whole-frame fallback; missing ("no_video") w/o frames."""
        if clip.frames is None or len(clip.frames) == 0:
            return missing("visual")
        frames = fit_frames(clip.frames, self.frame_side)
        faces, profiles = self.faces(frames)
        appearance = face_features(frames, [None if f is None else f.box for f in faces], profiles)
        vector = np.concatenate([appearance, expression_features(frames, faces, self.models)])
        status = () if any(face is not None for face in faces) else ("no_face",)
        return FeatureResult(finite_vector(vector, FACE_DIM), status)
