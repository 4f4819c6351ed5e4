"""Time and peak memory of every stage at the full MER-SEMI scale, with features and agent outputs synthesised.

Usage:
    .venv/bin/python -m bench.scale --pool 115595 --labelled 5030 --epochs 1     # the full pool (minutes)
    .venv/bin/python -m bench.scale --pool 15000 --labelled 1000 --root /tmp/s   # what tests/test_scale.py runs
No media is decoded: the corpus is a label CSV plus zero-byte pool files, the feature cache files are written
directly in the cache format, and three agents' probabilities go straight into the agent store. Then the real
`load_features`, `distill` and `submit` run on them. Each stage runs in its own process, which reports its
wall time and peak resident memory (resource.getrusage, itself and its children), so the peaks are per stage.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clips.labels import LABELS, NUM_LABELS
from clips.run import RunPaths

STAGES = ("synthesise", "store", "load_cold", "load_warm", "distill", "submit")
AGENTS = ("audio", "visual", "text")
POOL_DIR = "video-unlabeled"


def names_of(labelled: int, pool: int) -> tuple[list[str], list[str]]:
    """The labelled and pool clip names, MER2024 style."""
    return [f"sample_{i:08d}" for i in range(labelled)], [f"samplenew3_{i:08d}" for i in range(pool)]


def synthesise(root: Path, labelled: int, pool: int, seed: int = 0) -> None:
    """Write the corpus (label CSV, zero-byte pool files) and one feature cache file per clip and extractor."""
    from clips.io import atomic_write_text
    from features import build_extractor
    from features.base import FeatureResult
    from features.cache import clip_path, write_meta
    from features.stage import FeatureSettings

    data, run = root / "data", root / "run"
    labelled_names, pool_names = names_of(labelled, pool)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_LABELS, labelled)
    rows = "".join(f"{name},{LABELS[label]}\n" for name, label in zip(labelled_names, labels, strict=True))
    atomic_write_text(data / "label-disdim.csv", "name,discrete\n" + rows)
    (data / POOL_DIR).mkdir(parents=True, exist_ok=True)
    for name in pool_names:
        (data / POOL_DIR / f"{name}.mp4").touch()
    settings = FeatureSettings()
    for extractor_name in settings.extractors:
        extractor = build_extractor(extractor_name, num_frames=settings.num_frames)
        key = write_meta(RunPaths(run).features, extractor)
        for i, name in enumerate(labelled_names + pool_names):
            # the label shifts the mean so the student has something to learn; every 50th clip lacks the modality
            present = i % 50 != 7
            vector = rng.standard_normal(extractor.dim).astype(np.float32) if present else None
            if present and i < labelled:
                vector[: NUM_LABELS] += 2.0 * np.eye(NUM_LABELS, dtype=np.float32)[labels[i]]
            result = FeatureResult(vector, () if present else ("no_face",))
            _write_entry_fast(clip_path(RunPaths(run).features, key, name), result, extractor.dim)


def _write_entry_fast(path: Path, result, dim: int) -> None:
    """features.cache.write_entry without the fsync: synthetic files need no crash safety, and
    360,000 fsyncs would dominate the bench."""
    import io

    from clips.status import format_status

    vector = result.vector if result.vector is not None else np.zeros(dim, np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, feature=vector, mask=np.array(result.vector is not None),
             status=np.array(format_status(result.status)), clip_status=np.array("ok"), error=np.array(""))
    path.write_bytes(buffer.getvalue())


def store(root: Path, labelled: int, pool: int, batch: int = 1024, seed: int = 0) -> dict[str, float]:
    """Append every clip's probabilities for 3 agents in shards, then read them back and build the matrix."""
    from teacher.store import AgentStore

    names = sum(names_of(labelled, pool), [])
    rng = np.random.default_rng(seed)
    agents = AgentStore(RunPaths(root / "run").agents)
    seconds = {}
    started = time.perf_counter()
    for agent in AGENTS:
        agents.write_meta(agent, {"kind": "synthetic", "labelled_scores": "zero_shot"})  # random: saw no label
        for begin in range(0, len(names), batch):
            chunk = names[begin : begin + batch]
            agents.append(agent, chunk, rng.dirichlet(np.full(NUM_LABELS, 0.3), len(chunk)).astype(np.float32))
    seconds["append"] = time.perf_counter() - started
    started = time.perf_counter()
    for agent in AGENTS:
        agents.read(agent)
    seconds["read"] = time.perf_counter() - started
    started = time.perf_counter()
    matrix = agents.matrix(list(AGENTS), names)  # (agents, clips, 6)
    seconds["matrix"] = time.perf_counter() - started
    assert not np.isnan(matrix).any()
    return seconds


def load(root: Path, labelled: int, pool: int, cold: bool) -> dict[str, float]:
    """load_features of every clip; `cold` first deletes every index and consolidated file."""
    from features.stage import FeatureSettings, load_run_features

    features = RunPaths(root / "run").features
    if cold:
        for path in [*features.glob("*/index.npz"), *features.glob("*/consolidated-*.npz")]:
            path.unlink()
    names = sum(names_of(labelled, pool), [])
    started = time.perf_counter()
    settings = FeatureSettings()
    loaded = load_run_features(root / "run", settings, names)
    extractors = len(settings.extractors)
    assert loaded.masks.shape == (len(names), extractors)
    return {"clips": len(names), "files": extractors * len(names), "seconds": time.perf_counter() - started}


def distill_stage(root: Path, epochs: int) -> dict[str, float]:
    """The real `distill` (pseudo-labels from the store, 5-fold student) with few epochs."""
    from features.stage import FeatureSettings
    from student.distill import DistillConfig, distill
    from student.train import StudentConfig

    cfg = DistillConfig(data=root / "data", run=root / "run", features=FeatureSettings(workers=1),
                        student=StudentConfig(epochs=epochs, device="cpu"), progress=False)
    report = distill(cfg)
    return {"waf": report.scores.waf, "kept": sum(report.kept.values())}


def submit_stage(root: Path) -> dict[str, float]:
    """The real `submit` over the whole pool."""
    from features.stage import FeatureSettings
    from student.submit import SubmitConfig, submit

    summary = submit(SubmitConfig(data=root / "data", run=root / "run", features=FeatureSettings(workers=1),
                                  progress=False))
    return {"predictions": sum(summary.counts.values()), **summary.fallbacks}


def run_stage(stage: str, root: Path, labelled: int, pool: int, epochs: int) -> dict:
    """One stage in this process; returns its facts plus seconds and peak RSS in MiB."""
    started = time.perf_counter()
    facts: dict = {}
    if stage == "synthesise":
        synthesise(root, labelled, pool)
    elif stage == "store":
        facts = store(root, labelled, pool)
    elif stage in ("load_cold", "load_warm"):
        facts = load(root, labelled, pool, cold=stage == "load_cold")
    elif stage == "distill":
        facts = distill_stage(root, epochs)
    elif stage == "submit":
        facts = submit_stage(root)
    else:
        raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")
    # KiB; children (spawned workers) count too
    peak = max(own_peak_kib(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"stage": stage, "wall_s": time.perf_counter() - started, "peak_mib": peak / 1024, **facts}


def own_peak_kib() -> int:
    """Peak resident memory of this process's own address space, in KiB.

    VmHWM starts afresh at exec; ru_maxrss does not: a stage started by a process that already held 10 GB (a test
    run that loaded a model, say) would report the parent's peak as its own.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def bench(root: Path, labelled: int, pool: int, epochs: int, echo=print) -> list[dict]:
    """Every stage in its own process, in order; returns one record per stage."""
    records = []
    for stage in STAGES:
        command = [sys.executable, "-m", "bench.scale", "--stage", stage, "--root", str(root),
                   "--labelled", str(labelled), "--pool", str(pool), "--epochs", str(epochs)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if result.returncode != 0:
            raise RuntimeError(f"stage {stage} failed:\n{result.stderr[-4000:]}")
        record = json.loads(result.stdout.strip().splitlines()[-1])
        echo(f"{stage:<11} {record['wall_s']:8.1f} s  peak {record['peak_mib']:7.0f} MiB  "
             + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                         if k not in ("stage", "wall_s", "peak_mib")))
        records.append(record)
    return records


def main() -> None:
    """Parse flags; run one stage (--stage, used by bench itself) or all of them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=115_595)
    parser.add_argument("--labelled", type=int, default=5_030)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--root", type=Path, help="Working folder (default: a temporary one, removed after).")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.root, args.labelled, args.pool, args.epochs)))
        return
    print(f"{args.labelled} labelled + {args.pool} pool clips, the default extractors, 3 agents, "
          f"{args.epochs} epoch(s)")
    if args.root:
        bench(args.root, args.labelled, args.pool, args.epochs)
        return
    with tempfile.TemporaryDirectory() as tmp:
        bench(Path(tmp), args.labelled, args.pool, args.epochs)


if __name__ == "__main__":
    main()
