"""Where the faces are in a clip's frames: MediaPipe's BlazeFace (run by ai-edge-litert), one person per clip.

Usage:
    detector = BlazeFaceDetector()
    faces = detector.detect(frames)          # (T, H, W, 3) RGB -> the chosen person's Face or None per frame
    faces[0].box, faces[0].keypoints         # (x, y, w, h) in pixels; (6, 2) eyes, nose, mouth, ears
    tracks = detector.tracks(frames)         # every person seen, each a track of faces by frame

Search per frame:
    1. around the last face of each track (the `max_tracked` biggest), with the short-range model (a square 3
       face-sides wide, so the face fills a third of its 128-pixel input): the cheap common case;
    2. every `scan_every`-th frame, and when step 1 finds nothing, the whole frame, letterboxed to 192 pixels:
       faces wider than about 1/12 of the long side, and people coming into the shot;
    3. when nothing is found, square tiles as tall as the frame across its width (3 on a 16:9 frame): faces down
       to about 1/25 of the long side (50 pixels of a 1280x720 frame); on at most `tile_frames` frames of a clip,
       so a clip with nobody in it costs one model run per frame plus a few tile searches.
Faces are linked into tracks by overlap. The person returned is the speaker among the biggest: of the tracks
that fill the clip nearly as much as the biggest one (width times score summed over frames), the one whose lower
face (mouth, jaw) changes most between frames against its upper face; a close-up of the speaker is the common
shot, a two-shot of speaker and listener the common exception.
The models are vendored in clips/models (see its README.md: source package, licence, sha256). Feature
extraction (features.face) and the LLM teacher's face view (llm.views) both use this detector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

MODELS = Path(__file__).resolve().parent / "models"
BLAZEFACE_FILE = "blazeface_full_range.tflite"
# BlazeFace keypoints, in the model's order
KEYPOINTS = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")

Box = tuple[int, int, int, int]


@dataclass
class Face:
    """One detected face, in pixels of the frame it was found in."""

    # (x, y, w, h)
    box: Box
    # (6, 2) x, y of KEYPOINTS
    keypoints: np.ndarray
    score: float


def _anchors(size: int, grids: tuple[tuple[int, int], ...]) -> np.ndarray:
    """(N, 2) normalised anchor centres: for each (stride, anchors per cell), row by row over its grid."""
    rows = []
    for stride, per_cell in grids:
        cells = size // stride
        centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        ys, xs = np.meshgrid(centres, centres, indexing="ij")
        rows.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], axis=1), per_cell, axis=0))
    return np.concatenate(rows)


# model file, input side and anchor grids (MediaPipe's SSD anchor options) of the two BlazeFace variants: the full
# range model finds faces down to a few percent of the image; the short range one wants the face to fill a good
# part of it (a close-up, or the square around a tracked face) and costs a third as much
_VARIANTS: dict[str, tuple[str, int, tuple[tuple[int, int], ...]]] = {
    "full": (BLAZEFACE_FILE, 192, ((4, 1),)),
    "short": ("blazeface_short_range.tflite", 128, ((8, 2), (16, 6))),
}


class TfliteModel:
    """A vendored .tflite network on one CPU thread (XNNPACK): arrays in, arrays out; loads no pickle."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter  # imported here: building extractors stays cheap

        if not Path(path).is_file():
            raise FileNotFoundError(f"model {path} is missing; reinstall mer-semi (its package ships the file)")
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.outputs = [detail["index"] for detail in self.interpreter.get_output_details()]

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        """The network's outputs for one float32 input of the model's exact shape."""
        self.interpreter.set_tensor(self.input, np.ascontiguousarray(batch, dtype=np.float32))
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(index) for index in self.outputs]


class BlazeFace:
    """A BlazeFace network ("full" or "short" range): faces with scores and keypoints in one RGB image."""

    def __init__(self, variant: str = "full", min_score: float = 0.5, nms_iou: float = 0.3) -> None:
        file_name, self.size, grids = _VARIANTS[variant]
        self.net = TfliteModel(MODELS / file_name)
        self.anchors = _anchors(self.size, grids)
        self.min_score = min_score
        self.nms_iou = nms_iou

    def __call__(self, image: np.ndarray) -> list[Face]:
        """Faces in RGB `image` (H, W, 3) uint8 of any shape (letterboxed to a square), boxes in its pixels."""
        height, width = image.shape[:2]
        side = max(height, width)
        scale = self.size / side
        inner = (max(1, round(width * scale)), max(1, round(height * scale)))
        square = np.zeros((self.size, self.size, 3), np.uint8)
        square[: inner[1], : inner[0]] = cv2.resize(image, inner, interpolation=cv2.INTER_AREA)
        outs = self.net(square[None].astype(np.float32) * (2.0 / 255.0) - 1.0)  # input (1, size, size, 3) in [-1, 1]
        regress = next(o for o in outs if o.shape[-1] == 16).reshape(-1, 16)  # (N, 16): box + 6 keypoints
        logits = next(o for o in outs if o.shape[-1] == 1).reshape(-1)  # (N,)
        keep = logits > np.log(self.min_score / (1.0 - self.min_score))
        if not keep.any():
            return []
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[keep], -80.0, 80.0)))
        points = regress[keep].reshape(-1, 8, 2) / self.size + self.anchors[keep][:, None, :]
        points[:, 1] = regress[keep][:, 2:4] / self.size  # slot 1 is the box size, not a point
        points *= side  # normalised square coordinates -> pixels of `image` (the padding is right and bottom)
        centre, size = points[:, 0], points[:, 1]
        boxes = np.concatenate([centre - size / 2, size], axis=1)  # (N, 4) x, y, w, h
        return [
            Face(tuple(int(round(v)) for v in boxes[i]), points[i, 2:].copy(), float(scores[i]))
            for i in _suppressed(boxes.tolist(), scores.tolist(), self.min_score, self.nms_iou)
        ]


def _shift(face: Face, dx: int, dy: int) -> Face:
    """`face` found in a crop that starts at (dx, dy) of a frame, in the frame's pixels."""
    x, y, w, h = face.box
    return Face((x + dx, y + dy, w, h), face.keypoints + (dx, dy), face.score)


def _overlap(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / max(a[2] * a[3] + b[2] * b[3] - inter, 1)


@dataclass
class _Track:
    """One person's face across a clip's frames: frame index -> Face."""

    faces: dict[int, Face] = field(default_factory=dict)

    @property
    def last(self) -> Face:
        return self.faces[max(self.faces)]

    def weight(self) -> float:
        """How much of the clip this face fills: the sum over frames of its width times its score."""
        return sum(face.box[2] * face.score for face in self.faces.values())

    def mouth_motion(self, frames: np.ndarray) -> float:
        """How much more the lower half of this face changes between the frames it is seen in than the upper half
        does: a talking mouth and jaw move, the eyes and brows above them much less, and head motion or a light
        change moves both alike. Mean absolute change of the contrast-normalised halves (0 under 2 frames)."""
        # one crop size for the whole track (its median box side): box jitter would otherwise read as change
        side = float(np.median([max(face.box[2:]) for face in self.faces.values()]))
        halves = [_halves(frames[index], face.box, side) for index, face in sorted(self.faces.items())]
        if len(halves) < 2:
            return 0.0
        change = np.mean([np.abs(b - a).mean(axis=(1, 2)) for a, b in zip(halves, halves[1:], strict=False)], axis=0)
        return float(change[1] - change[0])


def _halves(frame: np.ndarray, box: Box, side: float, size: int = 24) -> np.ndarray:
    """(2, size // 2, size) upper and lower halves of the gray square of `side` pixels centred on the face box,
    each to zero mean and unit sd."""
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    x, y = int(round(cx - side / 2)), int(round(cy - side / 2))
    crop = frame[max(y, 0) : max(y + int(side), 1), max(x, 0) : max(x + int(side), 1)]
    gray = cv2.resize(cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY), (size, size),
                      interpolation=cv2.INTER_AREA).astype(np.float32)
    halves = gray.reshape(2, size // 2, size)
    return (halves - halves.mean(axis=(1, 2), keepdims=True)) / (halves.std(axis=(1, 2), keepdims=True) + 1e-3)


@dataclass
class BlazeFaceDetector:
    """One face per frame, the same person across a clip's frames; see the module docstring for the search."""

    min_score: float = 0.5
    # a tile search runs on at most this many frames of a clip (the frames where the whole-frame search finds none)
    tile_frames: int = 3
    # the face must be at least this many pixels wide in the frame handed in (smaller is noise at these sizes)
    min_width: int = 12
    # tracks filling at least this share of the biggest one's weight are the candidates; the one whose mouth moves
    # most among them is taken for the speaker
    speaker_share: float = 0.6
    # the whole frame is searched on every scan_every-th frame (from the first), and on any frame where no tracked
    # face is found again: people who come into the shot are picked up at that pace
    scan_every: int = 3
    # at most this many tracks (the biggest) are followed around their last box
    max_tracked: int = 4
    _net: Any = field(default=None, init=False, repr=False)
    _close: Any = field(default=None, init=False, repr=False)

    def settings(self) -> dict:
        """What changes which faces are found."""
        return {"detector": "blazeface-full-range, short-range tracking", "min_score": self.min_score,
                "tile_frames": self.tile_frames, "min_width": self.min_width, "choice": "speaker among largest",
                "speaker_share": self.speaker_share, "scan_every": self.scan_every, "max_tracked": self.max_tracked}

    def _model(self) -> BlazeFace:
        if self._net is None:
            self._net = BlazeFace("full", min_score=self.min_score)
        return self._net

    def _close_model(self) -> BlazeFace:
        if self._close is None:
            self._close = BlazeFace("short", min_score=self.min_score)
        return self._close

    def _around(self, frame: np.ndarray, previous: Face) -> list[Face]:
        """Faces in a square 3 face-sides wide centred on `previous`, clipped to the frame."""
        height, width = frame.shape[:2]
        x, y, w, h = previous.box
        half = 1.5 * max(w, h)
        x0, y0 = int(max(x + w / 2 - half, 0)), int(max(y + h / 2 - half, 0))
        x1, y1 = int(min(x + w / 2 + half, width)), int(min(y + h / 2 + half, height))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return []
        return [_shift(face, x0, y0) for face in self._close_model()(frame[y0:y1, x0:x1])]

    def _tiles(self, frame: np.ndarray) -> list[Face]:
        """Faces in square tiles of the frame's short side, overlapping, across its long side."""
        height, width = frame.shape[:2]
        side = min(height, width)
        # one more tile than covering needs, so a face on a tile border is whole in a neighbour
        count = int(np.ceil(max(height, width) / side)) + (1 if height != width else 0)
        faces = []
        for start in np.linspace(0, max(height, width) - side, count).astype(int):
            x0, y0 = (start, 0) if width >= height else (0, start)
            faces += [_shift(f, x0, y0) for f in self._model()(frame[y0 : y0 + side, x0 : x0 + side])]
        return faces

    def tracks(self, frames: np.ndarray) -> list[_Track]:
        """Every face of every frame of `frames` (T, H, W, 3) RGB, linked into one track per person.

        Per frame: each followed track is looked for around its last box; the whole frame is searched on scan
        frames and where no track is found again; a frame with no face at all gets a tile search while the
        budget lasts.
        A face joins the track whose last box it overlaps most (IoU above 0.2), else starts a track.
        """
        tracks: list[_Track] = []
        tile_budget = self.tile_frames
        for index, frame in enumerate(frames):
            frame = np.ascontiguousarray(frame)
            faces = []
            for track in sorted(tracks, key=lambda t: -t.weight())[: self.max_tracked]:
                faces += self._around(frame, track.last)
            if not faces or index % self.scan_every == 0:
                # a face found both ways keeps the close-up search's box: the two models' boxes differ a little
                faces += [f for f in self._model()(frame) if all(_overlap(f.box, g.box) <= 0.3 for g in faces)]
            if not faces and tile_budget > 0:
                tile_budget -= 1
                faces = self._tiles(frame)
            faces = _distinct([f for f in faces if f.box[2] >= self.min_width], self.min_score)
            taken: set[int] = set()
            for face in sorted(faces, key=lambda f: -f.box[2] * f.score):
                overlaps = [(_overlap(face.box, t.last.box), i) for i, t in enumerate(tracks) if i not in taken]
                best, position = max(overlaps, default=(0.0, -1))
                if best > 0.2:
                    tracks[position].faces[index] = face
                    taken.add(position)
                else:
                    tracks.append(_Track({index: face}))
                    taken.add(len(tracks) - 1)
        return tracks

    def detect(self, frames: np.ndarray) -> list[Face | None]:
        """The chosen person's face in each RGB frame of `frames` (T, H, W, 3), or None where it is not seen.

        The person: among the tracks that fill the clip about as much as the biggest (speaker_share of its
        weight: width times score summed over frames), the one whose mouth moves most; alone, the biggest. Frames
        where their track has no face are searched again around their face in the nearest frame.
        """
        tracks = self.tracks(frames)
        if not tracks:
            return [None] * len(frames)
        heaviest = max(track.weight() for track in tracks)
        candidates = [track for track in tracks if track.weight() >= self.speaker_share * heaviest]
        chosen = max(candidates, key=lambda t: (t.mouth_motion(frames), t.weight()))
        found = []
        for index, frame in enumerate(frames):
            face = chosen.faces.get(index)
            if face is None:
                # a frame where the search missed the person (a bigger face took the whole-frame search, or
                # the track had not started): look around their face in the nearest frame they were seen in
                nearest = chosen.faces[min(chosen.faces, key=lambda k: abs(k - index))]
                near = [f for f in self._around(np.ascontiguousarray(frame), nearest) if f.box[2] >= self.min_width]
                face = max(near, key=lambda f: f.score, default=None)
            found.append(face)
        return found


def _distinct(faces: list[Face], min_score: float) -> list[Face]:
    """`faces` found by several searches with duplicates of one face (IoU above 0.3) reduced to the best."""
    if len(faces) < 2:
        return faces
    picked = _suppressed([list(face.box) for face in faces], [face.score for face in faces], min_score, 0.3)
    return [faces[i] for i in picked]


def _suppressed(boxes: list[list[float]], scores: list[float], min_score: float, iou: float) -> np.ndarray:
    """Indices of the boxes (x, y, w, h) non-maximum suppression keeps: scores of at least `min_score`, and no kept
    box overlapping a better one by more than `iou`."""
    return np.asarray(cv2.dnn.NMSBoxes(boxes, scores, min_score, iou), dtype=np.int64).reshape(-1)
