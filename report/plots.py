"""The report's figures as PNG files beside the page: reliability diagrams, label-mass histograms, precision against
coverage with 95% intervals, and kept pseudo-labels against the labelled prior.

Usage:
    reliability_png(probs_before, probs_after, labels, path, title="audio")
    precision_coverage_png(filters_json["curves"], filters_json["chosen"], path)

Each figure goes through matplotlib's object API on an Agg canvas (no pyplot state) and is written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from clips.io import atomic_write_bytes
from clips.labels import LABELS

BINS = 10


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(Path(path), buffer.getvalue())


def reliability_bins(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin of width 1/BINS: (mean confidence, accuracy, clips) of the rows of `probs` (clips, 6)
    with evidence; NaN where a bin is empty."""
    has = ~np.isnan(probs).any(axis=1)
    conf, right = probs[has].max(axis=1), probs[has].argmax(axis=1) == labels[has]
    which = np.minimum((conf * BINS).astype(int), BINS - 1)
    counts = np.bincount(which, minlength=BINS)
    mean_conf = np.bincount(which, weights=conf, minlength=BINS) / np.maximum(counts, 1)
    accuracy = np.bincount(which, weights=right, minlength=BINS) / np.maximum(counts, 1)
    empty = counts == 0
    return np.where(empty, np.nan, mean_conf), np.where(empty, np.nan, accuracy), counts


def reliability_png(before: np.ndarray, after: np.ndarray, labels: np.ndarray, path: Path, title: str) -> None:
    """Accuracy against confidence of the labelled clips, before and after cross-fitted calibration."""
    fig = _figure(4.2, 3.6)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="perfectly calibrated")
    for probs, name, colour in ((before, "as stored", "#d62728"), (after, "calibrated (cross-fitted)", "#1f77b4")):
        conf, accuracy, _ = reliability_bins(probs, labels)
        ax.plot(conf, accuracy, marker="o", color=colour, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)


def mass_png(mass: np.ndarray, path: Path, title: str) -> None:
    """Histogram of an LLM agent's label mass (the probability it put on any label token)."""
    fig = _figure(4.2, 3.0)
    ax = fig.add_subplot()
    values = mass[np.isfinite(mass)]
    ax.hist(values, bins=20, range=(0, 1), color="#8c564b")
    ax.set_xlabel("label mass")
    ax.set_ylabel("clips")
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def precision_coverage_png(curves: dict[str, list[dict]], marks: dict[str, dict], path: Path) -> None:
    """Precision against coverage of each filter family on the held-out labelled clips, with the 95% Wilson
    interval of every point as an error bar, and one star per entry of `marks` (the chosen filter, the baseline)."""
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    for family, curve in curves.items():
        points = sorted((p["coverage"], p["precision"], p.get("precision_low", np.nan), p.get("precision_high", np.nan))
                        for p in curve if p.get("kept", 0) > 0)
        if not points:
            continue
        coverage, precision, low, high = (np.array(v, dtype=np.float64) for v in zip(*points, strict=True))
        # clipped at 0: an interval's end equal to its precision can differ from it by a rounding error
        below, above = (np.clip(np.nan_to_num(d), 0.0, None) for d in (precision - low, high - precision))
        ax.errorbar(coverage, precision, yerr=[below, above],
                    marker=".", capsize=2, lw=1, label=family)
    for name, point in marks.items():
        if point and point.get("kept", 0) > 0:
            ax.scatter([point["coverage"]], [point["precision"]], marker="*", s=180, zorder=5, label=name)
    ax.set_xlabel("coverage (kept / held-out labelled clips)")
    ax.set_ylabel("precision of the kept pseudo-labels")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def kept_prior_png(kept: dict[str, float], prior: dict[str, float], path: Path) -> None:
    """Share of the kept pseudo-labels per class beside the labelled clips' share."""
    fig = _figure(6.0, 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(LABELS))
    total = max(sum(kept.values()), 1e-9)
    ax.bar(x - 0.2, [kept.get(label, 0) / total for label in LABELS], width=0.4, label="kept pseudo-labels",
           color="#2ca02c")
    ax.bar(x + 0.2, [prior.get(label, 0) for label in LABELS], width=0.4, label="labelled prior", color="#7f7f7f")
    ax.set_xticks(x, LABELS)
    ax.set_ylabel("share")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)
