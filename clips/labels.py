"""The six MER2024 labels in the official index order, used by every stage.

Usage:
    from clips.labels import LABELS, label_index
    y = np.array([label_index(s) for s in strings])
"""

from __future__ import annotations

LABELS: tuple[str, ...] = ("neutral", "angry", "happy", "sad", "worried", "surprise")
NUM_LABELS = len(LABELS)
_INDEX = {label: i for i, label in enumerate(LABELS)}


def label_index(label: str) -> int:
    """Index of `label` in LABELS; raises ValueError naming the valid labels."""
    try:
        return _INDEX[label.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown label {label!r}: expected one of {', '.join(LABELS)}") from None


def is_label(label: str) -> bool:
    """True when `label` (case and surrounding blanks ignored) is one of LABELS."""
    return label.strip().lower() in _INDEX
