"""Timing the fusion student at MER2024 scale on synthetic features.

Usage:
    .venv/bin/python -m bench.student                       # 120,000 rows, default StudentConfig
    .venv/bin/python -m bench.student --rows 20000 --predict-rows 20000 --epochs 10

Synthesises feature blocks of sizes 88, 600 and 384 (eGeMAPS-, CLIP-patch- and text-embedding-like) with a
weak class signal and ~5% missing modalities: 5,030 labelled rows, the rest pseudo-labelled with soft targets.
Times train_student (5 folds, default config unless flags say otherwise) against a 3-minute target and
predict_student on the 115,595-row pool against a 30-second target, and prints peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time

import numpy as np

from clips.labels import NUM_LABELS
from student.train import StudentConfig, predict_student, train_student

TRAIN_TARGET_S = 180.0
PREDICT_TARGET_S = 30.0
DIMS = (88, 600, 384)
LABELLED = 5030
POOL = 115_595
# MER2024 train class shares (neutral, angry, happy, sad, worried, surprise)
CLASS_SHARE = np.array([1248, 1208, 1038, 730, 616, 190]) / 5030


def synthesise(rows: int, labelled: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(blocks, masks, classes): float32 blocks with a class-dependent mean shift, ~5% missing modalities."""
    rng = np.random.default_rng(seed)
    classes = rng.choice(NUM_LABELS, size=rows, p=CLASS_SHARE)
    blocks = []
    for m, dim in enumerate(DIMS):
        # weak class means, strongest in the first (audio-like) block as in MER2024
        centres = rng.normal(0.0, 0.12 / (m + 1), size=(NUM_LABELS, dim)).astype(np.float32)
        block = rng.standard_normal((rows, dim), dtype=np.float32)
        block += centres[classes]
        blocks.append(block)
    masks = rng.random((rows, len(DIMS))) >= 0.05
    return blocks, masks, classes


def pseudo_targets(classes: np.ndarray, labelled: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(targets, weights): one-hot for the first `labelled` rows, noisy soft distributions after."""
    rng = np.random.default_rng(seed + 1)
    targets = np.eye(NUM_LABELS, dtype=np.float32)[classes]
    soft = rng.dirichlet(np.ones(NUM_LABELS), size=len(classes) - labelled).astype(np.float32)
    targets[labelled:] = 0.7 * targets[labelled:] + 0.3 * soft
    weights = np.ones(len(classes), dtype=np.float32)
    weights[labelled:] = rng.uniform(0.3, 1.0, size=len(classes) - labelled)
    return targets, weights


def peak_rss_gib() -> float:
    """Peak resident memory of this process in GiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=120_000, help="training rows, labelled ones included")
    parser.add_argument("--predict-rows", type=int, default=POOL, help="rows to predict")
    parser.add_argument("--epochs", type=int, default=None, help="override StudentConfig.epochs")
    parser.add_argument("--device", default="auto", help="StudentConfig.device")
    args = parser.parse_args()

    cfg = StudentConfig(device=args.device)
    if args.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    blocks, masks, classes = synthesise(args.rows, LABELLED)
    targets, weights = pseudo_targets(classes, LABELLED)
    is_labelled = np.arange(args.rows) < LABELLED
    print(f"data: {args.rows} rows ({LABELLED} labelled), blocks {DIMS}, {1 - masks.mean():.1%} missing")

    start, cpu_start = time.perf_counter(), time.process_time()
    result = train_student(blocks, masks, targets, weights, is_labelled, cfg)
    train_s, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"train: {train_s:.1f} s wall, {train_cpu:.1f} s CPU, for {cfg.folds} folds x {cfg.epochs} epochs "
          f"({train_s / TRAIN_TARGET_S:.2f} x the {TRAIN_TARGET_S:.0f} s target); "
          f"OOF WAF {result.scores.waf:.4f}, best epochs {[f.best_epoch for f in result.folds]}")

    pool_blocks, pool_masks, _ = synthesise(args.predict_rows, 0, seed=1)
    start, cpu_start = time.perf_counter(), time.process_time()
    probs = predict_student(result, pool_blocks, pool_masks)
    predict_s, predict_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"predict: {predict_s:.1f} s wall, {predict_cpu:.1f} s CPU, for {len(probs)} rows "
          f"({predict_s / PREDICT_TARGET_S:.2f} x the {PREDICT_TARGET_S:.0f} s target)")
    load = os.getloadavg()[0]
    print(f"peak memory: {peak_rss_gib():.2f} GiB; load average {load:.1f} on {os.cpu_count()} CPUs "
          "(with a load above the CPU count, wall times include waiting for other jobs)")


if __name__ == "__main__":
    main()
