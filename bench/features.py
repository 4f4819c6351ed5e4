"""Throughput of the default feature extractors: clips per second on N synthetic 3-second mp4 clips.

Usage:
    python -m bench.features --clips 60 --workers 2         (as a module: bench/student.py would shadow the package)
Writes N H.264 + AAC clips (a real face photo drifting across 160x160 frames, a tone with noise) into a
temporary folder, runs extract_features with the default extractors from a cold cache, and prints clips/s, the
time per clip of decoding and of each extractor (per worker), and the peak resident memory of this process and
of its largest worker process. Target: >= 10 clips/s on 2 cores with 2 workers.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

import av
import cv2
import matplotlib
import numpy as np

from clips.dataset import ClipRef
from clips.media import SAMPLE_RATE
from features import DEFAULT_EXTRACTORS, extract_features

TRANSCRIPTS = ("我今天真的非常高兴", "你为什么不早点告诉我", "别担心，一切都会好起来的", "这到底是怎么回事")


def face_frames(count: int, size: int = 160) -> np.ndarray:
    """(count, size, size, 3) RGB frames of matplotlib's Grace Hopper photo (a face Haar finds), drifting."""
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = cv2.resize(cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)[:512], (size, size))
    return np.stack([np.roll(image, i % 20, axis=1) for i in range(count)])


def write_clip(path: Path, frames: np.ndarray, seconds: float, fps: int, seed: int) -> None:
    """An H.264 + AAC mp4 of `frames` at `fps` with a noisy tone at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * rng.uniform(120, 300) * t) + 0.02 * rng.standard_normal(t.size)).astype(
        np.float32
    )
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        video.options = {"preset": "ultrafast"}
        sound = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        for start in range(0, audio.size, 1024):
            chunk = av.AudioFrame.from_ndarray(audio[None, start : start + 1024], format="flt", layout="mono")
            chunk.sample_rate = SAMPLE_RATE
            chunk.pts = start
            out.mux(sound.encode(chunk))
        out.mux(sound.encode())


def main() -> None:
    """Parse flags, write the clips, run the extraction and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--num-frames", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        frames = face_frames(25)
        refs = []
        for i in range(args.clips):
            path = folder / f"bench_{i:05d}.mp4"
            write_clip(path, frames, args.seconds, fps=25, seed=i)
            refs.append(ClipRef(path.stem, path, None, TRANSCRIPTS[i % len(TRANSCRIPTS)]))
        report = extract_features(
            refs, DEFAULT_EXTRACTORS, folder / "cache", workers=args.workers, num_frames=args.num_frames
        )

    print(
        f"{args.clips} clips of {args.seconds:.0f} s, {args.workers} workers, extractors {DEFAULT_EXTRACTORS}"
    )
    print(
        f"elapsed {report.elapsed:.1f} s (including worker start-up): {report.clips_per_second:.1f} clips/s"
    )
    print(f"statuses {report.status_counts}, errors {len(report.errors)}")
    for part, seconds in sorted(report.seconds.items()):
        print(f"  {part:<20} {1000 * seconds / max(report.processed, 1):7.1f} ms/clip")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: main process {own:.0f} MiB, largest worker {children:.0f} MiB")


if __name__ == "__main__":
    main()
