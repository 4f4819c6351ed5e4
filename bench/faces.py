"""Face detection on real-size frames: detection rate and ms/frame, the old pipeline against the current one.

Usage:
    python -m bench.faces --clips 14 --frames 8
Makes clips of 1280x720 wide shots (bench.scenes: real face photos scaled to 36-300 pixels wide on a blurred
background, drifting a little between frames, JPEG-strength noise) and shots with nobody in them, then runs
    before  the Haar cascades on frames decoded at 320 pixels (the embedded default until issue 11);
    after   the face extractor's detection (BlazeFace with tracking and tiles, Haar fallback) at its frame_side.
Prints, per face width, the share of frames and of clips (a face on at least one frame) where the detector found
the true face, the CPU ms per frame, and the false detections on the empty shots.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np

from bench.scenes import background, face_hit, load_portraits, wide_shot
from clips.media import fit_frames
from features.face import FaceDetector, FaceExtractor

WIDTHS = (36, 48, 64, 90, 130, 200, 300)
Boxes = list[tuple[float, float, float, float] | None]


def make_clip(rng: np.random.Generator, portrait, face_width: int, frames: int) -> tuple[np.ndarray, list]:
    """(frames, 720, 1280, 3) RGB frames of one shot whose face drifts, and the true face box per frame."""
    scene = background(rng)
    start = np.array([rng.integers(0, 1280 - 3 * face_width), rng.integers(0, max(1, 720 - 4 * face_width))])
    step = rng.normal(0, 0.05 * face_width, 2)
    shots = [wide_shot(rng, portrait, face_width, scene, tuple(int(v) for v in start + i * step))
             for i in range(frames)]
    return np.stack([s[0] for s in shots]), [s[1] for s in shots]


def before() -> Callable[[np.ndarray], Boxes]:
    """The old embedded default: frames decoded at 320 pixels, Haar on a 160-pixel copy (faces >= 40 there)."""
    detector = FaceDetector()

    def detect(frames: np.ndarray) -> Boxes:
        small = fit_frames(frames, 320)
        scale = frames.shape[2] / small.shape[2]
        boxes, _ = detector.detect(small)
        return [None if b is None else tuple(v * scale for v in b) for b in boxes]

    return detect


def after() -> Callable[[np.ndarray], Boxes]:
    """The face extractor's detection on frames shrunk to its frame_side."""
    extractor = FaceExtractor()

    def detect(frames: np.ndarray) -> Boxes:
        small = fit_frames(frames, extractor.frame_side)
        scale = frames.shape[2] / small.shape[2]
        faces, _ = extractor.faces(small)
        return [None if f is None else tuple(v * scale for v in f.box) for f in faces]

    return detect


def main() -> None:
    """Make the clips, run both detectors, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=14, help="clips per face width")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    rng = np.random.default_rng(args.seed)
    portraits = load_portraits()
    clips = {w: [make_clip(rng, portraits[i % len(portraits)], w, args.frames) for i in range(args.clips)]
             for w in WIDTHS}
    empty = [np.stack([background(rng)] * args.frames) for _ in range(args.clips)]
    print(f"{args.clips} clips x {args.frames} frames per face width, 1280x720, photos: "
          f"{', '.join(p.name for p in portraits)}")
    print(f"{'detector':<8} {'width':>5} {'frames':>7} {'clips':>6}")
    for name, detect in (("before", before()), ("after", after())):
        started, frames_seen = time.process_time(), 0
        frame_hits, clip_hits = [], []
        for width in WIDTHS:
            hits = [[face_hit(box, truth) for box, truth in zip(detect(frames), truths, strict=True)]
                    for frames, truths in clips[width]]
            frames_seen += sum(len(h) for h in hits)
            frame_hits += [np.mean(h) for h in hits]
            clip_hits += [any(h) for h in hits]
            print(f"{name:<8} {width:>5} {np.mean([np.mean(h) for h in hits]):>7.2f} "
                  f"{np.mean([any(h) for h in hits]):>6.2f}")
        ms = 1000 * (time.process_time() - started) / frames_seen
        false = sum(box is not None for frames in empty for box in detect(frames))
        print(f"{name:<8} {'all':>5} {np.mean(frame_hits):>7.2f} {np.mean(clip_hits):>6.2f}   {ms:.1f} ms/frame; "
              f"{false} detections on {len(empty) * args.frames} empty frames")


if __name__ == "__main__":
    main()
