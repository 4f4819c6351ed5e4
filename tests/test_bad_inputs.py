"""Every kind of bad input in one corpus built here, each with its expected outcome, through the real commands.

CSV problems stop a command with ONE error that lists every bad row with its line and the fix; media problems
give a per-clip status in run/features/status.csv and the run goes on; `submit` predicts every candidate name
and reports how many predictions came from each fallback.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bench.features import face_frames
from bench.features import write_clip as write_face_clip
from cli import main
from clips import media
from clips.labels import LABELS
from clips.run import RunPaths
from tests.test_media import claim_mkv_duration
from tests.test_media import write_clip as write_media_clip

BOM = "\ufeff"
POOL = "video-unlabeled"


def invoke(*args: object, ok: bool = True) -> str:
    """Run the CLI in this process; returns its output (exit code 0 when `ok`, else non-zero)."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# clip -> the flags its status.csv row must hold exactly (sorted as clips.status.STATUSES orders them)
EXPECTED_POOL = {
    "face_ok": "ok",
    "zero_bytes": "no_audio;no_video;unreadable",
    "truncated": "no_face;truncated",
    "corrupt_header": "no_audio;no_video;unreadable",
    "no_video_stream": "no_video",
    "no_audio_stream": "no_audio;no_face",
    "lying_duration": "no_face",
    "no_face": "no_face",
    "locked": "no_audio;no_video;unreadable",
    "transcript_empty": "empty_transcript",
    "transcript_garbage": "empty_transcript",
    "transcript_missing": "empty_transcript",
    "english": "ok",
    "english_nospace": "ok",
}


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory) -> Path:
    """A MER2024-layout corpus: 12 labelled clips (2 per label) and a pool of every media defect."""
    root = tmp_path_factory.mktemp("bad") / "data"
    labelled, pool = root / "video-labeled", root / POOL
    labelled.mkdir(parents=True)
    pool.mkdir()
    face = face_frames(10)
    label_rows, transcripts = [], []
    for i, label in enumerate(LABELS * 2):
        name = f"lab_{i:02d}"
        write_face_clip(labelled / f"{name}.mp4", face, seconds=1.0, fps=10, seed=i)
        label_rows.append(f"{name},{label.capitalize()}")
        transcripts.append(f"{name},我今天{label}")
    label_rows.append("lab_no_media,happy")  # a labelled name with no media file: status no_media

    write_face_clip(pool / "face_ok.mp4", face, seconds=1.0, fps=10, seed=99)
    (pool / "zero_bytes.mp4").write_bytes(b"")
    cut = write_media_clip(pool / "truncated.mp4", seconds=3.0, options={"movflags": "faststart"})
    cut.write_bytes(cut.read_bytes()[: int(cut.stat().st_size * 0.6)])
    # a good clip whose first 64 bytes (the ftyp box and the start of the next) are overwritten with noise
    good = write_media_clip(pool / "corrupt_header.mp4", seconds=1.0).read_bytes()
    (pool / "corrupt_header.mp4").write_bytes(np.random.default_rng(0).bytes(64) + good[64:])
    write_media_clip(pool / "no_video_stream.mp4", seconds=1.0, video=False)
    write_media_clip(pool / "no_audio_stream.mp4", seconds=1.0, audio=False)
    # the container claims 33 minutes for a clip that plays 3 seconds
    claim_mkv_duration(write_media_clip(pool / "lying_duration.mkv", seconds=3.0), 33 * 60.0)
    write_media_clip(pool / "no_face.mp4", seconds=1.0)
    write_media_clip(pool / "locked.mp4", seconds=1.0)
    for i, name in enumerate(("transcript_empty", "transcript_garbage", "transcript_missing", "english",
                              "english_nospace")):
        write_face_clip(pool / f"{name}.mp4", face, seconds=1.0, fps=10, seed=50 + i)

    transcripts += [
        "face_ok,我很好", "zero_bytes,空", "truncated,一半", "corrupt_header,坏", "no_video_stream,只有声音",
        "no_audio_stream,没有声音", "lying_duration,很长", "no_face,没有脸", "locked,锁住",
        "transcript_empty,", "transcript_garbage,<|zh-CN|>", "english,I am so happy today",
        "english_nospace,Iamsohappytoday",
    ]
    (root / "label-disdim.csv").write_text(BOM + "name,discrete\n" + "\n".join(label_rows) + "\n", "utf-8")
    (root / "label-transcription.csv").write_text(BOM + "name,chinese\n" + "\n".join(transcripts) + "\n", "utf-8")
    return root


@pytest.fixture(scope="module")
def bad_run(bad_corpus: Path, tmp_path_factory) -> tuple[Path, Path, str]:
    """`features` run in this process over the bad corpus, `locked.mp4` refusing to open like a mode-0 file."""
    run = tmp_path_factory.mktemp("bad-run") / "run"
    locked = bad_corpus / POOL / "locked.mp4"
    real_open = media.av.open

    def refuse_locked(file, *args, **kwargs):
        if Path(str(file)) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    locked.chmod(0)
    with pytest.MonkeyPatch.context() as patch:
        # root reads any file whatever its mode: simulate the refusal the way tests/test_media.py does
        if is_root:
            patch.setattr(media.av, "open", refuse_locked)
        try:
            output = invoke("features", "--data", bad_corpus, "--run", run, "--workers", 1, "--quiet")
        finally:
            locked.chmod(0o644)
    return bad_corpus, run, output


def test_media_problems_get_a_status_and_the_run_goes_on(bad_run) -> None:
    data, run, output = bad_run
    statuses = {row["name"]: row["status"] for row in rows(RunPaths(run).features / "status.csv")}
    for name, expected in EXPECTED_POOL.items():
        assert statuses[name] == expected, (name, statuses[name])
    assert statuses["lab_no_media"] == "no_audio;no_video;empty_transcript;no_media"
    assert all(statuses[f"lab_{i:02d}"] == "ok" for i in range(12))
    assert len(statuses) == 12 + 1 + len(EXPECTED_POOL)


def test_csv_problems_make_one_error_listing_every_bad_row(bad_corpus: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "video-labeled").mkdir(parents=True)
    (data / "label-disdim.csv").write_text(
        BOM + "name,discrete\n"
        "ok_1,happy\n"
        "bad_label,joyful\n"
        "ok_1,sad\n"
        "../evil,angry\n"
        "sub/dir,worried\n"
        "no_media_anywhere,neutral\n",
        "utf-8",
    )
    result = CliRunner().invoke(main, ["features", "--data", str(data), "--run", str(tmp_path / "run"), "--quiet"])

    assert result.exit_code != 0
    message = result.output
    assert "4 bad row(s)" in message
    assert "label-disdim.csv:3: unknown label 'joyful'" in message and "use one of" in message
    assert "label-disdim.csv:4: duplicate name 'ok_1', also on line 2 -- keep one row per clip" in message
    assert "label-disdim.csv:5: name '../evil' is unsafe" in message and "rename it" in message
    assert "label-disdim.csv:6: name 'sub/dir' is unsafe" in message
    # a name with no media file is not a CSV error: the clip is kept with status no_media
    assert ":7:" not in message
    assert "Traceback" not in message
    assert not (tmp_path / "evil").exists() and not (tmp_path / "run").exists()


def test_missing_column_names_the_columns_found_and_needed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "label-disdim.csv").write_text(BOM + "name,valence\nsample_1,1.0\n", "utf-8")

    output = invoke("features", "--data", data, "--run", tmp_path / "run", "--quiet", ok=False)

    assert "label-disdim.csv:1: missing column(s) discrete -- found columns name, valence" in output


def test_transcript_csv_problems_are_listed_together(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "video-labeled").mkdir(parents=True)
    (data / "label-disdim.csv").write_text("name,discrete\na,happy\n", "utf-8")
    (data / "label-transcription.csv").write_text("name,chinese\na,你好\na,again\n,orphan\n..,up\n", "utf-8")

    output = invoke("features", "--data", data, "--run", tmp_path / "run", "--quiet", ok=False)

    assert "3 bad row(s)" in output
    assert ":3: duplicate name 'a'" in output and ":4: empty name" in output and ":5: name '..' is unsafe" in output


def test_an_oddly_named_pool_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / POOL).mkdir(parents=True)
    (data / "label-disdim.csv").write_text("name,discrete\n", "utf-8")
    (data / POOL / "back\\slash.mp4").write_bytes(b"")
    (data / POOL / " padded.mp4").write_bytes(b"")

    output = invoke("features", "--data", data, "--run", tmp_path / "run", "--quiet", ok=False)

    assert "2 media file name(s) cannot be clip names" in output and "rename the file" in output
    assert not (tmp_path / "run").exists()


def test_empty_pool_features_run_and_submit_says_what_to_do(bad_corpus: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "video-labeled").mkdir(parents=True)
    (data / "label-disdim.csv").write_text("name,discrete\nonly,happy\n", "utf-8")
    run = tmp_path / "run"

    invoke("features", "--data", data, "--run", run, "--quiet")
    statuses = {row["name"]: row["status"] for row in rows(RunPaths(run).features / "status.csv")}
    assert statuses == {"only": "no_audio;no_video;empty_transcript;no_media"}

    output = invoke("submit", "--data", data, "--run", run, "--quiet", ok=False)
    assert "no candidate names" in output and "--candidates" in output


def test_submit_predicts_every_candidate_with_fallbacks(bad_run, tmp_path: Path) -> None:
    data, features_run, _ = bad_run
    run = tmp_path / "run"
    shutil.copytree(features_run, run)
    config = tmp_path / "distill.yaml"
    # the run's fold assignment has 2 folds; the student follows it
    config.write_text("folds: 2\nstudent:\n  folds: 2\n  epochs: 2\n  hidden: 16\n", "utf-8")
    invoke("distill", "--data", data, "--run", run, "--no-pseudo", "--config", config, "--quiet")
    candidates = tmp_path / "candidates.csv"
    names = [*EXPECTED_POOL, "ghost_without_media", "lab_no_media"]
    candidates.write_text(BOM + "name\n" + "\n".join(names) + "\n", "utf-8")
    out = tmp_path / "submission.csv"

    output = invoke("submit", "--data", data, "--run", run, "--candidates", candidates, "--out", out, "--quiet")

    submission = rows(out)
    assert [row["name"] for row in submission] == names
    assert {row["discrete"] for row in submission} <= set(LABELS)
    # no modality at all: a name without media anywhere, and a labelled name without media or transcript
    prior = {"ghost_without_media", "lab_no_media"}
    # a clip that failed to decode is a finished clip that later stages do not decode again: `locked` keeps
    # its transcript only, though it is readable by now
    full = {"face_ok", "truncated", "lying_duration", "no_face", "english", "english_nospace"}
    some = set(names) - prior - full
    assert f"'all_modalities': {len(full)}" in output
    assert f"'some_modalities': {len(some)}" in output
    assert f"'class_prior': {len(prior)}" in output


def test_candidates_with_an_unsafe_name_are_refused(bad_run, tmp_path: Path) -> None:
    data, run, _ = bad_run
    candidates = tmp_path / "candidates.csv"
    candidates.write_text("name\nface_ok\n../evil\n", "utf-8")

    output = invoke("submit", "--data", data, "--run", run, "--candidates", candidates,
                    "--out", tmp_path / "s.csv", "--quiet", ok=False)

    assert "candidates.csv:3: name '../evil' is unsafe" in output
    assert not (tmp_path / "s.csv").exists()
