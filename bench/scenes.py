"""Real-size test shots for the benches: a real face photo scaled into a 1280x720 wide shot, with known face box.

Usage:
    portraits = load_portraits()                        # real photos that ship in installed packages
    frame, truth = wide_shot(rng, portraits[0], face_width=90)   # (720, 1280, 3) RGB, face (x, y, w, h)
    found = face_hit(box, truth)                        # a detected box on the true face?
There is no real footage in the repository, so the benches make shots the way a TV wide shot looks to a detector:
a head-and-shoulders cut of a photographed face, 36 to 300 pixels wide, on a blurred textured background, with
sensor noise and JPEG-strength compression. The face boxes of the photos were measured once by hand-checked
detection on the full photos and are fixed here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import matplotlib
import numpy as np


@dataclass
class Portrait:
    """A photo (RGB) with one frontal face at `box` (x, y, w, h)."""

    name: str
    image: np.ndarray
    box: tuple[int, int, int, int]


# (package, path inside it, face box): photos of real faces that ship inside registry packages
_PHOTOS = (
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", (161, 123, 208, 208)),
    ("skimage", "data/astronaut.png", (173, 68, 107, 107)),
    ("skimage", "data/camera.png", (204, 125, 71, 71)),
)


def load_portraits() -> list[Portrait]:
    """Every photo of _PHOTOS whose package is installed (matplotlib's Grace Hopper always is)."""
    portraits = []
    for package, relative, box in _PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(spec.submodule_search_locations[0]) / relative
        if package == "matplotlib":
            path = Path(matplotlib.get_data_path()) / relative.removeprefix("mpl-data/")
        image = cv2.imread(str(path))
        if image is not None:
            portraits.append(Portrait(path.stem, cv2.cvtColor(image, cv2.COLOR_BGR2RGB), box))
    return portraits


def background(rng: np.random.Generator, width: int = 1280, height: int = 720) -> np.ndarray:
    """(height, width, 3) RGB: a lit wall with furniture-like blocks, out of focus."""
    ramp = np.linspace(0.6, 1.1, width)[None, :, None] * rng.uniform(70, 190, 3)
    image = np.broadcast_to(ramp, (height, width, 3)).copy()
    for _ in range(8):
        x, y = rng.integers(0, width), rng.integers(height // 3, height)
        w, h = rng.integers(40, 400), rng.integers(40, 300)
        image[y : y + h, x : x + w] = rng.uniform(20, 230, 3)
    image = cv2.GaussianBlur(np.clip(image, 0, 255).astype(np.uint8), (0, 0), rng.uniform(2, 5))
    return image


def wide_shot(
    rng: np.random.Generator, portrait: Portrait, face_width: int, scene: np.ndarray | None = None,
    offset: tuple[int, int] | None = None,
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A 1280x720 RGB frame with `portrait`'s head and shoulders scaled so the face is `face_width` pixels wide.

    `scene` (a background) and `offset` (top-left of the cut) make consecutive frames of one shot; by default
    both are random. Returns the frame and the face box (x, y, w, h) in it.
    """
    frame = (background(rng) if scene is None else scene).copy()
    height, width = frame.shape[:2]
    fx, fy, fw, fh = portrait.box
    scale = face_width / fw
    # the cut: from one face width left of the face to two right of it, 0.8 face heights above to 2.5 below
    x0, y0 = max(0, int(fx - fw)), max(0, int(fy - 0.8 * fh))
    x1, y1 = min(portrait.image.shape[1], int(fx + 2 * fw)), min(portrait.image.shape[0], int(fy + 2.5 * fh))
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    cut = cv2.resize(portrait.image[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
    if offset is None:
        offset = (int(rng.integers(0, max(1, width - size[0]))), int(rng.integers(0, max(1, height - size[1]))))
    px, py = int(np.clip(offset[0], 0, width - 1)), int(np.clip(offset[1], 0, height - 1))
    visible = frame[py : py + size[1], px : px + size[0]]
    visible[:] = cut[: visible.shape[0], : visible.shape[1]]
    noisy = np.clip(frame.astype(np.float32) + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
    _, encoded = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 50])
    truth = (px + (fx - x0) * scale, py + (fy - y0) * scale, fw * scale, fh * scale)
    return cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED), truth


def face_hit(box: tuple[float, float, float, float] | None, truth: tuple[float, float, float, float]) -> bool:
    """Whether `box` lies on the true face: its centre inside the true box and its width 0.5 to 2.2 times as big
    (Haar's boxes take in more forehead than BlazeFace's)."""
    if box is None:
        return False
    x, y, w, h = box
    tx, ty, tw, th = truth
    return tx <= x + w / 2 <= tx + tw and ty <= y + h / 2 <= ty + th and 0.5 <= w / tw <= 2.2
