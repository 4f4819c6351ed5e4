"""The MER2024 ranking metric (weighted F1, "WAF") and the tables and plots around it.

Usage:
    s = score(y_true, y_pred)                  # integer indices into clips.labels.LABELS
    print(format_scores(s))
    plot_confusion(s.confusion, Path("out/confusion.png"), title="student OOF")
    s = evaluate_csv(Path("submission.csv"), Path("label-disdim.csv"), png=Path("out/cm.png"))

WAF is sklearn's f1_score(average="weighted"), exactly as the organisers compute it; accuracy is reported
beside it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from clips.io import atomic_write_bytes
from clips.labels import LABELS, NUM_LABELS, is_label, label_index

# how many missing names an error message lists before it gives the count only
_LISTED_NAMES = 20


class ScoringCsvError(ValueError):
    """A prediction or label CSV with problems; the message lists every problem with its file and line."""


@dataclass
class Scores:
    """Weighted F1 and its parts for one set of predictions."""

    # weighted F1 over the classes present in y_true (the MER2024 ranking metric)
    waf: float
    # fraction of exact matches
    accuracy: float
    # F1 per label name; 0.0 for a label with no true and no predicted clip
    per_class_f1: dict[str, float]
    # true clips per label name
    support: dict[str, int]
    # (6, 6) counts, rows = true label, columns = predicted label, in LABELS order
    confusion: np.ndarray


def score(y_true: np.ndarray, y_pred: np.ndarray) -> Scores:
    """Scores of integer label predictions `y_pred` against `y_true` (both (N,), values in 0..5).

    Raises ValueError for empty or mismatched inputs or values outside 0..5.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape or len(y_true) == 0:
        raise ValueError(
            f"score needs two non-empty 1-D arrays of the same length, got {y_true.shape} and {y_pred.shape}"
        )
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() >= NUM_LABELS:
            raise ValueError(
                f"{name} must hold integer label indices 0..{NUM_LABELS - 1}; got {values.dtype}"
            )
    classes = np.arange(NUM_LABELS)
    # labels= fixes the per-class order; classes without support weigh 0 in the weighted mean either way
    per_class = f1_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    confusion = np.zeros((NUM_LABELS, NUM_LABELS), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    return Scores(
        waf=float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        accuracy=float(np.mean(y_true == y_pred)),
        per_class_f1={label: float(f) for label, f in zip(LABELS, per_class, strict=True)},
        support={label: int(n) for label, n in zip(LABELS, confusion.sum(axis=1), strict=True)},
        confusion=confusion,
    )


def format_scores(s: Scores) -> str:
    """A small fixed-width table: WAF and accuracy, then F1 and support per label."""
    lines = [f"WAF {s.waf:.4f}  accuracy {s.accuracy:.4f}", f"{'label':<10}{'f1':>8}{'support':>9}"]
    for label in LABELS:
        lines.append(f"{label:<10}{s.per_class_f1[label]:>8.4f}{s.support[label]:>9d}")
    return "\n".join(lines)


def plot_confusion(confusion: np.ndarray, path: Path, title: str = "") -> None:
    """Write a PNG of `confusion` (6, 6): colours normalised per true-label row, counts in the cells."""
    # the object API with an Agg canvas leaves pyplot's global backend and figure list alone
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    confusion = np.asarray(confusion)
    if confusion.shape != (NUM_LABELS, NUM_LABELS):
        raise ValueError(f"confusion must be ({NUM_LABELS}, {NUM_LABELS}), got {confusion.shape}")
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    fig = Figure(figsize=(6.5, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true label's clips")
    for i in range(NUM_LABELS):
        for j in range(NUM_LABELS):
            ax.text(
                j,
                i,
                str(int(confusion[i, j])),
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(NUM_LABELS), LABELS, rotation=45, ha="right")
    ax.set_yticks(range(NUM_LABELS), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(Path(path), buffer.getvalue())


def _read_label_csv(path: Path, problems: list[str]) -> dict[str, int | None] | None:
    """name -> label index (None for a bad label) from a `name,discrete` CSV; problems go to `problems`.

    Returns None when the file cannot be read or its header lacks the columns.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as error:
        problems.append(f"{path}: cannot read the file ({error.strerror}); check the path")
        return None
    reader = csv.reader(io.StringIO(text))
    header = [cell.strip() for cell in next(reader, [])]
    if "name" not in header or "discrete" not in header:
        problems.append(f"{path}:1: header {','.join(header)!r} needs the columns 'name' and 'discrete'")
        return None
    name_col, label_col = header.index("name"), header.index("discrete")
    labels: dict[str, int | None] = {}
    first_line: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(name_col, label_col):
            problems.append(f"{path}:{line}: {len(row)} column(s), expected {len(header)}")
            continue
        name, label = row[name_col].strip(), row[label_col]
        if not name:
            problems.append(f"{path}:{line}: empty name")
            continue
        if name in first_line:
            problems.append(f"{path}:{line}: duplicate name {name!r} (first on line {first_line[name]})")
            continue
        first_line[name] = line
        labels[name] = label_index(label) if is_label(label) else None
        if labels[name] is None:
            problems.append(f"{path}:{line}: unknown label {label!r}; valid labels: {', '.join(LABELS)}")
    return labels


def evaluate_csv(pred_csv: Path, labels_csv: Path, png: Path | None = None) -> Scores:
    """Scores of the `name,discrete` predictions in `pred_csv` against `labels_csv`; a confusion PNG if `png`.

    Predictions for names that `labels_csv` lacks are ignored (a submission covers the whole pool).
    Raises ScoringCsvError listing every problem of both files: a bad header, an unknown label, a duplicate
    name, and the names of `labels_csv` that have no prediction row.
    """
    problems: list[str] = []
    predicted = _read_label_csv(pred_csv, problems)
    truth = _read_label_csv(labels_csv, problems)
    if truth is not None and not truth:
        problems.append(f"{labels_csv}: no labelled rows; give a file with a header and one row per clip")
    missing = [name for name in truth or {} if predicted is not None and name not in predicted]
    if missing:
        listed = ", ".join(missing[:_LISTED_NAMES])
        more = f" ... and {len(missing) - _LISTED_NAMES} more" if len(missing) > _LISTED_NAMES else ""
        problems.append(
            f"{pred_csv}: {len(missing)} name(s) of {labels_csv} have no prediction: {listed}{more}; "
            "predict every labelled name"
        )
    if problems:
        raise ScoringCsvError(f"{len(problems)} problem(s):\n" + "\n".join(problems))
    assert truth is not None and predicted is not None  # every None path above added a problem
    names = list(truth)
    result = score(np.array([truth[n] for n in names]), np.array([predicted[n] for n in names]))
    if png is not None:
        plot_confusion(result.confusion, png, title=f"{Path(pred_csv).name}: WAF {result.waf:.4f}")
    return result
