"""Reading a corpus: the MER2024 raw release layout or a generic folder of media plus CSVs.

Usage:
    corpus = load_corpus(Path("mer2024-dataset"))                  # finds the unlabelled folder
    corpus = load_corpus(Path("mer2024-dataset"), unlabelled_dir="video-unlabeled-with-test2noise")
    for ref in corpus.labelled: ref.name, ref.path, ref.label, ref.transcript, ref.status
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class DataError(ValueError):
    """A corpus file with problems; the message lists every bad row with its line number and the fix."""


@dataclass(frozen=True)
class ClipRef:
    """One clip as the corpus lists it, before decoding."""

    # clip name: the media file's stem, checked safe as a file name
    name: str
    # media file, or None when the name has no media file (status then holds "no_media")
    path: Path | None
    # one of clips.labels.LABELS for labelled clips, None for the unlabelled pool
    label: str | None
    # cleaned transcript, or None when missing/empty/garbage (status then holds "empty_transcript")
    transcript: str | None
    # data-layer flags from clips.status.STATUSES
    status: tuple[str, ...] = ()


@dataclass
class Corpus:
    """The labelled clips and the unlabelled pool of one dataset folder."""

    root: Path
    layout: Literal["mer2024", "generic"]
    labelled: list[ClipRef]
    unlabelled: list[ClipRef]

    def all(self) -> list[ClipRef]:
        """Labelled clips first, then the pool."""
        return [*self.labelled, *self.unlabelled]


def load_corpus(root: Path, unlabelled_dir: str | None = None) -> Corpus:
    """Read `root` in the MER2024 layout if it has label-disdim.csv, else the generic layout."""
    raise NotImplementedError
