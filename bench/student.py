"""Timing the fusion student at MER2024 scale on synthetic features of the default extractors' sizes.

Usage:
    .venv/bin/python -m bench.student                       # both settings below, default StudentConfig
    .venv/bin/python -m bench.student --only one-modality --modality whisper
    .venv/bin/python -m bench.student --set linear_member=false --set patience=20

Feature blocks take the sizes of the default extractors, read from features.registry (egemaps 88, whisper 1024,
face 534, e5 384), with a weak class signal and ~5% missing modalities. Two settings, each timed part by part
(per fold: the network's epochs, the linear member's fit, the fold's report; then prediction):
    full           5-fold student on 5,030 labelled + 115,595 pseudo-labelled pool rows (soft targets), then
                   predict_student on the 115,595-row pool: targets 3 minutes and 30 s on 2 CPU cores;
    one-modality   5-fold student on 3,400 labelled rows of one block (--modality, default e5: a text-only
                   corpus the size of a subtitle set): target 60 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time

import numpy as np
import yaml

from clips.labels import NUM_LABELS
from features.registry import DEFAULT_EXTRACTORS, build_extractor
from student.train import StudentConfig, StudentResult, predict_student, train_student

FULL_TARGET_S = 180.0
PREDICT_TARGET_S = 30.0
ONE_MODALITY_TARGET_S = 60.0
LABELLED = 5030
POOL = 115_595
ONE_MODALITY_ROWS = 3400
# MER2024 train class shares (neutral, angry, happy, sad, worried, surprise)
CLASS_SHARE = np.array([1248, 1208, 1038, 730, 616, 190]) / 5030


def default_dims() -> dict[str, int]:
    """Feature size of each default extractor, as the registry builds it (no model is loaded)."""
    return {name: int(build_extractor(name).dim) for name in DEFAULT_EXTRACTORS}


def synthesise(rows: int, dims: list[int], seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(blocks, masks, classes): float32 blocks with a class-dependent mean shift, ~5% missing modalities."""
    rng = np.random.default_rng(seed)
    classes = rng.choice(NUM_LABELS, size=rows, p=CLASS_SHARE)
    blocks = []
    for m, dim in enumerate(dims):
        # weak class means, strongest in the first block, as audio is in MER2024
        centres = rng.normal(0.0, 0.12 / (m + 1), size=(NUM_LABELS, dim)).astype(np.float32)
        block = rng.standard_normal((rows, dim), dtype=np.float32)
        block += centres[classes]
        blocks.append(block)
    masks = rng.random((rows, len(dims))) >= 0.05
    if len(dims) == 1:
        masks[:] = True
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


def print_parts(name: str, result: StudentResult, wall: float, target: float, cpu: float) -> None:
    """One line per fold with the seconds of each part, then the total against its target and the CPU seconds
    (training steps run on one thread, so on a busy machine the CPU time is the better guide to an idle one)."""
    for k, fold in enumerate(result.folds):
        parts = ", ".join(f"{part} {s:.1f} s" for part, s in fold.seconds.items())
        print(f"  {name} fold {k}: {parts}; {len(fold.history)} epochs run, chosen {fold.best_epoch}")
    totals = {part: sum(f.seconds.get(part, 0.0) for f in result.folds) for part in result.folds[0].seconds}
    print(f"{name}: {wall:.1f} s wall ({', '.join(f'{p} {s:.1f} s' for p, s in totals.items())}; "
          f"{wall / target:.2f} x the {target:.0f} s target); {cpu:.1f} s CPU; OOF WAF {result.scores.waf:.4f}")


def run_full(cfg: StudentConfig, dims: dict[str, int], rows: int, predict_rows: int) -> None:
    blocks, masks, classes = synthesise(rows, list(dims.values()))
    targets, weights = pseudo_targets(classes, LABELLED)
    is_labelled = np.arange(rows) < LABELLED
    print(f"full: {rows} rows ({LABELLED} labelled), blocks {dims}, {1 - masks.mean():.1%} missing")
    start, cpu = time.perf_counter(), time.process_time()
    result = train_student(blocks, masks, targets, weights, is_labelled, cfg, progress=False)
    print_parts("full", result, time.perf_counter() - start, FULL_TARGET_S, time.process_time() - cpu)
    del blocks
    pool_blocks, pool_masks, _ = synthesise(predict_rows, list(dims.values()), seed=1)
    start = time.perf_counter()
    probs = predict_student(result, pool_blocks, pool_masks)
    predict_s = time.perf_counter() - start
    print(f"predict: {predict_s:.1f} s wall for {len(probs)} rows ({predict_s / PREDICT_TARGET_S:.2f} x the "
          f"{PREDICT_TARGET_S:.0f} s target)")


def run_one_modality(cfg: StudentConfig, modality: str, dim: int) -> None:
    blocks, masks, classes = synthesise(ONE_MODALITY_ROWS, [dim], seed=2)
    targets = np.eye(NUM_LABELS, dtype=np.float32)[classes]
    print(f"one-modality: {ONE_MODALITY_ROWS} labelled rows of {modality} ({dim})")
    start, cpu = time.perf_counter(), time.process_time()
    result = train_student(blocks, masks, targets, np.ones(len(classes), np.float32),
                           np.ones(len(classes), bool), cfg, progress=False)
    print_parts("one-modality", result, time.perf_counter() - start, ONE_MODALITY_TARGET_S,
                time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["full", "one-modality"], help="run one setting (default both)")
    parser.add_argument("--rows", type=int, default=LABELLED + POOL, help="full: training rows, labelled included")
    parser.add_argument("--predict-rows", type=int, default=POOL, help="full: rows to predict")
    parser.add_argument("--modality", default="e5", help="one-modality: the default extractor whose size is used")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a StudentConfig field (YAML value), e.g. linear_member=false")
    args = parser.parse_args()

    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = yaml.safe_load(value)
    cfg = dataclasses.replace(StudentConfig(device="cpu"), **overrides)
    dims = default_dims()
    print(f"config: {dataclasses.asdict(cfg)}")
    if args.only in (None, "one-modality"):
        run_one_modality(cfg, args.modality, dims[args.modality])
    if args.only in (None, "full"):
        run_full(cfg, dims, args.rows, args.predict_rows)
    print(f"peak memory: {peak_rss_gib():.2f} GiB; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(with a load above the CPU count, wall times include waiting for other jobs)")


if __name__ == "__main__":
    main()
