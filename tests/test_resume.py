"""Crashes and resumption: `features` and `teacher-label` killed with SIGKILL at seeded points, then rerun.

Each killed command runs as `python cli.py ...` in its own session, so the kill reaches its worker processes
too. After a rerun to completion the outputs must equal those of an uninterrupted run: every clip present once,
the same arrays, no temporary file left.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clips.dataset import load_corpus
from clips.run import RunPaths
from features.cache import read_entry, read_meta
from features.stage import FeatureSettings, load_run_features
from teacher.store import AgentStore

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
AGENTS = ["audio", "text", "visual"]


def cli(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    """`python cli.py ARGS` to completion."""
    result = subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=REPO, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def kill_when(args: list[object], ready, seed: int, delay: bool = True, timeout: float = 120.0) -> bool:
    """Start `python cli.py ARGS`, SIGKILL its whole process group once `ready()` holds; True if it was killed.

    `seed` draws a short extra delay (when `delay`) so the kill lands at different points of the write pattern.
    """
    process = subprocess.Popen([sys.executable, "cli.py", *map(str, args)], cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pause = random.Random(seed).uniform(0.0, 0.3) if delay else 0.0
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                return False  # finished before the kill point: the rerun then only has to skip
            assert time.monotonic() < deadline, "the command never reached the kill point"
            time.sleep(0.005)
        time.sleep(pause)
        if process.poll() is not None:
            return False
        os.killpg(process.pid, signal.SIGKILL)
        return True
    finally:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()


def cache_files(run: Path) -> int:
    return sum(1 for _ in RunPaths(run).features.glob("*/*.npz"))


def shard_count(run: Path) -> int:
    return sum(1 for _ in RunPaths(run).agents.glob("*/part-*.npz"))


def status_rows(run: Path) -> list[tuple[str, str]]:
    with (RunPaths(run).features / "status.csv").open(newline="", encoding="utf-8") as handle:
        return sorted((row["name"], row["status"]) for row in csv.DictReader(handle))


def leftovers(run: Path) -> list[Path]:
    return sorted(run.rglob("*.part"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A demo corpus and an uninterrupted `features` + `teacher-label` run over it."""
    root = tmp_path_factory.mktemp("resume")
    data, run = root / "data", root / "reference"
    cli("make-demo", data, "--labelled", 30, "--unlabelled", 18, "--workers", 2, "--quiet")
    cli("features", "--data", data, "--run", run, "--quiet")
    cli("teacher-label", "--data", data, "--run", run, "--batch-size", 4, "--quiet")
    names = [ref.name for ref in load_corpus(data).all()]
    return data, run, names


def assert_same_features(run: Path, reference: Path, names: list[str]) -> None:
    settings = FeatureSettings()
    got, want = load_run_features(run, settings, names), load_run_features(reference, settings, names)
    for got_block, want_block in zip(got.blocks, want.blocks, strict=True):
        np.testing.assert_array_equal(got_block, want_block)
    np.testing.assert_array_equal(got.masks, want.masks)
    rows = status_rows(run)
    assert [name for name, _ in rows] == sorted(names), "a clip is missing or doubled in status.csv"
    assert rows == status_rows(reference)


def assert_same_agents(run: Path, reference: Path, names: list[str]) -> None:
    store, reference_store = AgentStore(RunPaths(run).agents), AgentStore(RunPaths(reference).agents)
    assert store.agents() == reference_store.agents() == AGENTS
    for agent in AGENTS:
        stored, _ = store.read(agent)
        assert sorted(stored) == sorted(names), f"{agent}: a clip is missing or stored twice"
    np.testing.assert_allclose(store.matrix(AGENTS, names), reference_store.matrix(AGENTS, names), rtol=1e-6)


@pytest.mark.parametrize("seed", [0])
def test_features_killed_then_rerun_equals_an_uninterrupted_run(reference, tmp_path: Path, seed: int) -> None:
    data, reference_run, names = reference
    run = tmp_path / "run"
    threshold = random.Random(seed).randint(1, len(names) * 3 // 2)

    killed = kill_when(["features", "--data", data, "--run", run, "--quiet"], lambda: cache_files(run) >= threshold,
                       seed)

    assert killed, "features finished before the kill point; lower the threshold"
    assert cache_files(run) < len(names) * 3
    cli("features", "--data", data, "--run", run, "--quiet")
    assert_same_features(run, reference_run, names)
    assert leftovers(run) == []


@pytest.mark.parametrize("phase", ["features", "agents"])
def test_teacher_label_killed_then_rerun_equals_an_uninterrupted_run(reference, tmp_path: Path, phase: str) -> None:
    data, reference_run, names = reference
    run = tmp_path / "run"
    args = ["teacher-label", "--data", data, "--run", run, "--batch-size", 4, "--quiet"]
    if phase == "features":
        threshold = random.Random(2).randint(1, len(names) * 3 // 2)
        killed = kill_when(args, lambda: cache_files(run) >= threshold, seed=2)
        assert killed, "teacher-label finished its features before the kill point; lower the threshold"
    else:
        # features come from the reference run, so the kill lands while agents store shards; scoring is fast, so
        # the kill may come too late on a quick machine: the rerun must then only skip
        shutil.copytree(RunPaths(reference_run).features, RunPaths(run).features)
        threshold = random.Random(3).randint(1, 3 * len(names) // 4 - 1)
        kill_when(args, lambda: shard_count(run) >= threshold, seed=3, delay=False)

    stored = {agent: AgentStore(RunPaths(run).agents).read(agent)[0] for agent in AGENTS}
    output = cli(*args).stdout
    assert_same_agents(run, reference_run, names)
    assert_same_features(run, reference_run, names)
    scored = {line.split(":")[0]: int(line.split()[1]) for line in output.splitlines() if "clips scored" in line}
    assert scored == {agent: len(names) - len(stored[agent]) for agent in AGENTS}
    assert leftovers(run) == []


def test_corrupt_cache_files_and_leftover_temp_files_are_recomputed_and_removed(reference, tmp_path: Path) -> None:
    data, reference_run, names = reference
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    folders = sorted(p for p in RunPaths(run).features.iterdir() if p.is_dir())
    truncated, garbled = folders[0] / f"{names[0]}.npz", folders[1] / f"{names[1]}.npz"
    truncated.write_bytes(truncated.read_bytes()[:100])
    garbled.write_bytes(b"PK\x03\x04" + os.urandom(garbled.stat().st_size - 4))
    # what a kill -9 during atomic writes leaves behind: hidden .part files next to real outputs
    for folder in (folders[2], RunPaths(run).agents / "audio", RunPaths(run).features):
        (folder / f".{names[2]}.npz.x1y2z3.part").write_bytes(b"half a file")

    cli("features", "--data", data, "--run", run, "--quiet")

    for path, folder in ((truncated, folders[0]), (garbled, folders[1])):
        dim = int(read_meta(RunPaths(run).features, folder.name)["dim"])
        assert read_entry(path, dim) is not None, f"{path} was not recomputed"
    assert_same_features(run, reference_run, names)
    cli("teacher-label", "--data", data, "--run", run, "--batch-size", 4, "--quiet")
    assert_same_agents(run, reference_run, names)
    assert leftovers(run) == []


def fold_shard_count(run: Path) -> int:
    return sum(1 for _ in RunPaths(run).agents.glob("*/fold-scores/*/part-*.npz"))


def test_fold_model_scoring_killed_then_rerun_equals_an_uninterrupted_run(reference, tiny_dirs, tmp_path: Path):
    """An LLM agent served from 5 fold adapters, SIGKILLed while its fold models' shards are written: the rerun
    keeps what was stored, scores the rest, and stores what an uninterrupted run stores."""
    import yaml

    from teacher.finetune import LoraSettings, TeacherTrainConfig, teacher_train
    from teacher.llm_options import LLMAgentOptions

    data, reference_run, names = reference
    options = {"model": str(tiny_dirs["qwen2_5_text"]), "family": "qwen2_5_text", "view": "text", "device": "cpu",
               "batch_size": 2}
    teacher = tmp_path / "teacher"
    teacher_train(TeacherTrainConfig(data=data, out=teacher, teacher=LLMAgentOptions(**options), run=reference_run,
                                     folds=5, lora=LoraSettings(r=4, alpha=8), epochs=1, batch_size=4, grad_accum=1,
                                     progress=False))
    config = tmp_path / "label.yaml"
    config.write_text(yaml.safe_dump({"agents": [{"name": "qwen", "kind": "llm", "options": options,
                                                  "fold_adapters": str(teacher)}]}), encoding="utf-8")
    runs = {}
    for which in ("uninterrupted", "killed"):
        runs[which] = tmp_path / which
        shutil.copytree(RunPaths(reference_run).features, RunPaths(runs[which]).features)
        for name in ("folds.csv", "folds.json"):
            shutil.copy2(reference_run / name, runs[which] / name)
    args = ["teacher-label", "--config", config, "--data", data, "--batch-size", 2, "--quiet", "--run"]
    cli(*args, runs["uninterrupted"])
    killed = kill_when([*args, runs["killed"]], lambda: fold_shard_count(runs["killed"]) >= 3, seed=5, delay=False)
    assert killed, "teacher-label finished before the kill point"
    stored = fold_shard_count(runs["killed"])
    assert AgentStore(RunPaths(runs["killed"]).agents).done("qwen") == set()  # killed while the fold models scored
    cli(*args, runs["killed"])
    assert fold_shard_count(runs["killed"]) > stored  # the rerun kept the stored batches and added the rest
    got, want = AgentStore(RunPaths(runs["killed"]).agents), AgentStore(RunPaths(runs["uninterrupted"]).agents)
    for read in (got.read, got.read_folds, got.read_mass):
        got_names, got_arrays = read("qwen")
        want_names, want_arrays = getattr(want, read.__name__)("qwen")
        assert list(got_names) == list(want_names) and sorted(got_names) == sorted(names)
        # the same clips and the same scores; the resumed batches pad to other lengths, which moves float32
        # probabilities by a rounding step (1e-7)
        np.testing.assert_array_equal(np.isnan(got_arrays), np.isnan(want_arrays))
        np.testing.assert_allclose(got_arrays, want_arrays, rtol=1e-5, atol=1e-6)
    assert leftovers(runs["killed"]) == []
