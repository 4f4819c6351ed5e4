"""`--engine ray`: features and teacher-label on local Ray Data CPU workers give the single-process outputs.

Ray is an optional extra (pip install -e ".[ray]"); the README test command and CI install it, so these run on
every change and skip only where a user left the extra out.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (optional extra: pip install -e '.[ray]')")

from clips.dataset import ClipRef  # noqa: E402
from features import extract_features, load_features  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def read_status(root: Path) -> list[dict[str, str]]:
    with (root / "status.csv").open(newline="", encoding="utf-8") as handle:
        return sorted(csv.DictReader(handle), key=lambda row: row["name"])


def test_ray_features_equal_single_process(local_ray, tmp_path: Path, write_clip) -> None:
    refs = [ClipRef(f"clip_{i}", write_clip(tmp_path / f"clip_{i}.mp4", seconds=1.0, seed=i), None, f"第{i}句")
            for i in range(4)]
    refs.append(ClipRef("no_media", None, None, None, status=("no_media", "empty_transcript")))
    names = [ref.name for ref in refs]

    local = extract_features(refs, ["egemaps", "e5"], tmp_path / "local", workers=1, progress=False)
    remote = extract_features(refs, ["egemaps", "e5"], tmp_path / "ray", workers=2, progress=False, engine="ray")

    assert (remote.processed, remote.skipped) == (5, 0)
    assert remote.status_counts == local.status_counts
    assert read_status(tmp_path / "ray") == read_status(tmp_path / "local")
    want, got = (load_features(tmp_path / root, ["egemaps", "e5"], names) for root in ("local", "ray"))
    for got_block, want_block in zip(got.blocks, want.blocks, strict=True):
        np.testing.assert_array_equal(got_block, want_block)
    np.testing.assert_array_equal(got.masks, want.masks)


def test_ray_teacher_label_equals_single_process(local_ray, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main
    from clips.run import RunPaths
    from teacher.store import AgentStore

    def invoke(*args: object) -> str:
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    data = tmp_path / "data"
    invoke("make-demo", data, "--labelled", 30, "--unlabelled", 18, "--workers", 2, "--quiet")
    for run, engine in ((tmp_path / "local", "local"), (tmp_path / "ray", "ray")):
        invoke("teacher-label", "--data", data, "--run", run, "--batch-size", 8, "--engine", engine, "--quiet")
    local, remote = AgentStore(RunPaths(tmp_path / "local").agents), AgentStore(RunPaths(tmp_path / "ray").agents)
    names = sorted(local.read("audio")[0])
    assert remote.agents() == local.agents() == ["audio", "text", "visual"]
    for agent in local.agents():
        assert sorted(remote.read(agent)[0]) == names
    np.testing.assert_allclose(remote.matrix(local.agents(), names), local.matrix(local.agents(), names), rtol=1e-6)
