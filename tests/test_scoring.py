"""Tests for clips.scoring: WAF against hand-computed values, the CSV checks, the confusion PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg
from sklearn.metrics import f1_score

from clips.labels import LABELS
from clips.scoring import ScoringCsvError, evaluate_csv, format_scores, plot_confusion, score

# 10 clips over all 6 classes; per-class F1 worked out by hand below
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 3, 4, 5])
Y_PRED = np.array([0, 0, 1, 1, 1, 2, 0, 3, 5, 5])
# neutral: TP 2, FP 1, FN 1 -> 2/3; angry: TP 2, FP 1 -> P 2/3, R 1 -> 0.8; happy: TP 1, FN 1 -> 2/3;
# sad: 1; worried: 0; surprise: TP 1, FP 1 -> 2/3
HAND_F1 = [2 / 3, 0.8, 2 / 3, 1.0, 0.0, 2 / 3]
SUPPORT = [3, 2, 2, 1, 1, 1]
# (3 * 2/3 + 2 * 0.8 + 2 * 2/3 + 1 + 0 + 2/3) / 10
HAND_WAF = 0.66


def test_score_matches_hand_computed_values_and_sklearn() -> None:
    s = score(Y_TRUE, Y_PRED)
    assert s.waf == pytest.approx(HAND_WAF, abs=1e-12)
    assert s.waf == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="weighted"), abs=1e-12)
    assert s.accuracy == pytest.approx(0.7)
    assert [s.per_class_f1[label] for label in LABELS] == pytest.approx(HAND_F1)
    assert [s.support[label] for label in LABELS] == SUPPORT
    assert s.confusion.tolist() == [
        [2, 1, 0, 0, 0, 0],
        [0, 2, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0, 1],
    ]


def test_score_with_a_predicted_class_absent_from_the_truth_matches_sklearn() -> None:
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    s = score(y_true, y_pred)
    assert s.waf == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    # neutral: TP 1, FN 1 -> 2/3 (weight 2); angry: 1 (weight 2)
    assert s.waf == pytest.approx((2 * 2 / 3 + 2 * 1.0) / 4)
    assert s.per_class_f1["happy"] == 0.0
    assert s.support["happy"] == 0


def test_score_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        score(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="y_pred must hold integer label indices 0..5"):
        score(np.array([0, 1]), np.array([0, 6]))


def test_format_scores_lists_every_label() -> None:
    text = format_scores(score(Y_TRUE, Y_PRED))
    lines = text.splitlines()
    assert lines[0] == "WAF 0.6600  accuracy 0.7000"
    assert lines[1] == "label           f1  support"
    assert lines[2] == "neutral     0.6667        3"
    assert lines[6] == "worried     0.0000        1"
    assert len(lines) == 2 + len(LABELS)


def _write(path: Path, rows: list[str], encoding: str = "utf-8") -> Path:
    path.write_text("\n".join(rows) + "\n", encoding=encoding)
    return path


def test_evaluate_csv_scores_and_ignores_names_outside_the_labels(tmp_path: Path) -> None:
    names = [f"clip{i}" for i in range(len(Y_TRUE))]
    truth = _write(tmp_path / "labels.csv", ["name,discrete,valence"]
                   + [f"{n},{LABELS[y]},0.0" for n, y in zip(names, Y_TRUE, strict=True)])
    # a BOM, a capitalised label and an extra pool clip must all be accepted
    pred = _write(tmp_path / "pred.csv", ["name,discrete"]
                  + [f"{n},{LABELS[y].capitalize()}" for n, y in zip(names, Y_PRED, strict=True)]
                  + ["pool_clip,happy"], encoding="utf-8-sig")
    s = evaluate_csv(pred, truth, png=None)
    assert s.waf == pytest.approx(HAND_WAF)
    assert s.confusion.tolist() == score(Y_TRUE, Y_PRED).confusion.tolist()


def test_evaluate_csv_lists_every_problem_at_once(tmp_path: Path) -> None:
    truth = _write(tmp_path / "labels.csv", ["name,discrete", "a,happy", "b,sad", "c,angry", "d,neutral"])
    pred = _write(tmp_path / "pred.csv", ["name,discrete", "a,happy", "b,joyful", "a,sad", "x,neutral"])
    with pytest.raises(ScoringCsvError) as caught:
        evaluate_csv(pred, truth)
    assert str(caught.value).splitlines() == [
        "3 problem(s):",
        f"{pred}:3: unknown label 'joyful'; valid labels: neutral, angry, happy, sad, worried, surprise",
        f"{pred}:4: duplicate name 'a' (first on line 2)",
        f"{pred}: 2 name(s) of {truth} have no prediction: c, d; predict every labelled name",
    ]


def test_evaluate_csv_lists_twenty_missing_names_then_a_count(tmp_path: Path) -> None:
    names = [f"n{i:02d}" for i in range(25)]
    truth = _write(tmp_path / "labels.csv", ["name,discrete"] + [f"{n},sad" for n in names])
    pred = _write(tmp_path / "pred.csv", ["name,discrete", "other,sad"])
    with pytest.raises(ScoringCsvError) as caught:
        evaluate_csv(pred, truth)
    assert str(caught.value).splitlines()[1] == (
        f"{pred}: 25 name(s) of {truth} have no prediction: {', '.join(names[:20])} ... and 5 more; "
        "predict every labelled name"
    )


def test_evaluate_csv_rejects_a_header_without_the_columns(tmp_path: Path) -> None:
    truth = _write(tmp_path / "labels.csv", ["name,discrete", "a,happy"])
    pred = _write(tmp_path / "pred.csv", ["id,label", "a,happy"])
    with pytest.raises(ScoringCsvError) as caught:
        evaluate_csv(pred, truth)
    assert str(caught.value).splitlines() == [
        "1 problem(s):",
        f"{pred}:1: header 'id,label' needs the columns 'name' and 'discrete'",
    ]


def test_plot_confusion_writes_a_readable_png(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "confusion.png"
    plot_confusion(score(Y_TRUE, Y_PRED).confusion, path, title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_evaluate_csv_writes_the_png_when_asked(tmp_path: Path) -> None:
    truth = _write(tmp_path / "labels.csv", ["name,discrete", "a,happy", "b,sad"])
    pred = _write(tmp_path / "pred.csv", ["name,discrete", "a,happy", "b,happy"])
    png = tmp_path / "cm.png"
    s = evaluate_csv(pred, truth, png=png)
    assert s.accuracy == 0.5
    assert png.read_bytes()[:4] == b"\x89PNG"
