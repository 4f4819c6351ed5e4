"""The pipeline through the command line, on a small synthetic corpus: every stage's outputs, resumption, fallbacks."""

import csv
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from clips.labels import LABELS
from clips.run import RunPaths
from teacher.store import AgentStore

COMMANDS = {"make-demo", "features", "teacher-label", "distill", "submit", "evaluate", "demo", "teacher-train", "ask",
            "fetch-llm", "report"}


def _invoke(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _rows(path):
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A 48 + 72 clip corpus taken through make-demo, features, teacher-label, distill and submit."""
    root = tmp_path_factory.mktemp("pipeline")
    data, run = root / "data", root / "run"
    _invoke("make-demo", data, "--labelled", 48, "--unlabelled", 72, "--workers", 2, "--quiet")
    common = ["--data", data, "--run", run, "--quiet"]
    outputs = {
        "features": _invoke("features", *common),
        "teacher-label": _invoke("teacher-label", *common, "--batch-size", 16),
        "distill": _invoke("distill", *common, "--epochs", 8),
        "submit": _invoke("submit", *common),
    }
    return data, run, outputs


def test_command_list_and_help_examples():
    assert set(main.commands) == COMMANDS
    for name in COMMANDS:
        output = CliRunner().invoke(main, [name, "--help"]).output
        assert "Example: python cli.py " + name in output, name


def test_every_stage_writes_its_outputs(pipeline):
    data, run, outputs = pipeline
    paths = RunPaths(run)
    statuses = {row["name"]: row["status"] for row in _rows(paths.features / "status.csv")}
    assert len(statuses) == 120
    manifest = __import__("json").loads((data / "demo-manifest.json").read_text())
    assert {c["kind"] for c in manifest["broken"]} == {"unreadable", "no_audio", "no_video", "no_face",
                                                       "empty_transcript"}
    for clip in manifest["broken"]:
        # each broken clip carries its kind's flag (an unreadable file is also without audio and video)
        expected = {"unreadable": "unreadable", "no_audio": "no_audio", "no_video": "no_video",
                    "no_face": "no_face", "empty_transcript": "empty_transcript"}[clip["kind"]]
        assert expected in statuses[clip["name"]].split(";"), clip
    assert sorted(AgentStore(paths.agents).agents()) == ["audio", "text", "visual"]
    assert "audio: 120 clips scored, 0 already stored" in outputs["teacher-label"]

    pool = {row["name"] for row in _rows(data / "hidden-labels.csv")}
    submission = _rows(paths.submission)
    assert [r["name"] for r in submission] == sorted(pool) and len(submission) == 72
    assert {r["discrete"] for r in submission} <= set(LABELS)
    assert "sources: {'all_modalities': " in outputs["submit"]
    report = __import__("json").loads((paths.student / "report.json").read_text())
    assert report["labelled"] == 48 and 0.0 <= report["waf"] <= 1.0
    kept = _rows(paths.pseudo / "pseudo-labels.csv")
    assert kept
    # one selection per student fold, each from that fold's agent models; `kept` is their mean per class
    assert len(report["kept_per_fold"]) == 5
    for k, counts in enumerate(report["kept_per_fold"]):
        assert sum(counts.values()) == sum(row["fold"] == str(k) for row in kept) > 0
    assert all(row["name"] in pool for row in kept)

    png = run / "confusion.png"
    evaluated = _invoke("evaluate", paths.submission, data / "hidden-labels.csv", "--png", png)
    assert "WAF" in evaluated and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_teacher_label_resumes_without_loss_or_duplicates(pipeline):
    data, run, _ = pipeline
    store = AgentStore(RunPaths(run).agents)
    names_before, probs_before = store.read("visual")
    shards = sorted((RunPaths(run).agents / "visual").glob("part-*.npz"))
    assert len(shards) == 8                                # 120 clips in shards of 16
    for shard in shards[3:]:                               # as if killed after the third shard
        shard.unlink()
    output = _invoke("teacher-label", "--data", data, "--run", run, "--quiet", "--batch-size", 16)
    assert "visual: 72 clips scored, 48 already stored" in output
    assert "audio: 0 clips scored, 120 already stored" in output
    names_after, probs_after = store.read("visual")
    assert sorted(names_after) == sorted(names_before) and len(names_after) == len(set(names_after))
    order = [names_after.index(n) for n in names_before]
    np.testing.assert_allclose(probs_after[order], probs_before, rtol=1e-6)


def test_submit_candidates_fall_back_to_prior(pipeline, tmp_path):
    data, run, _ = pipeline
    pool = [row["name"] for row in _rows(data / "hidden-labels.csv")]
    candidates = tmp_path / "candidates.csv"
    candidates.write_text("name\n" + "\n".join([*pool[:5], "samplenew3_99999999"]) + "\n")
    out = tmp_path / "sub.csv"
    output = _invoke("submit", "--data", data, "--run", run, "--quiet", "--candidates", candidates, "--out", out)
    rows = _rows(out)
    assert [r["name"] for r in rows] == [*pool[:5], "samplenew3_99999999"]
    assert "'class_prior': 1" in output
    # the prior is the most frequent labelled class
    labelled = [r["discrete"] for r in _rows(data / "label-disdim.csv")]
    assert rows[-1]["discrete"] == max(LABELS, key=labelled.count)


def test_config_errors_are_usage_errors(pipeline, tmp_path):
    data, run, _ = pipeline
    config = tmp_path / "bad.yaml"
    config.write_text("filter:\n  treshold: 0.9\n")
    result = CliRunner().invoke(main, ["distill", "--data", str(data), "--run", str(run), "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown key(s) treshold for FilterConfig" in result.output
    result = CliRunner().invoke(main, ["features", "--run", str(run)])
    assert result.exit_code == 2 and "missing required key(s) data" in result.output


def test_distill_refuses_a_run_without_agents(pipeline, tmp_path):
    data, run, _ = pipeline
    other = tmp_path / "run"
    shutil.copytree(RunPaths(run).features, RunPaths(other).features)
    result = CliRunner().invoke(main, ["distill", "--data", str(data), "--run", str(other), "--quiet"])
    assert result.exit_code == 1
    assert "run `python cli.py teacher-label` with this --run first" in result.output
