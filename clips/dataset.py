"""Reading a corpus: the MER2024 raw release layout or a generic folder of media plus CSVs.

Usage:
    corpus = load_corpus(Path("mer2024-dataset"))                  # finds the unlabelled folder
    corpus = load_corpus(Path("mer2024-dataset"), unlabelled_dir="video-unlabeled-with-test2noise")
    for ref in corpus.labelled: ref.name, ref.path, ref.label, ref.transcript, ref.status
    truth = read_label_csv(Path("labels.csv"))                     # name -> label, for `evaluate`
    names = read_names_csv(Path("candidates.csv"))                 # the names a submission must cover

Every CSV is read whole and its problems are collected before one DataError lists them all as
`file:line: problem -- fix`. A clip that lacks a media file or a transcript is kept with a status flag, never
dropped, so later stages can still use what it has.
"""

from __future__ import annotations

import csv
import logging
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clips.io import name_problem
from clips.labels import LABELS
from clips.media import MEDIA_SUFFIXES
from clips.status import merge_status

log = logging.getLogger(__name__)

MER2024_LABELS_CSV = "label-disdim.csv"
MER2024_TRANSCRIPTS_CSV = "label-transcription.csv"
MER2024_ASR_CSV = "transcription-merge.csv"
MER2024_LABELLED_DIR = "video-labeled"
GENERIC_LABELS_CSV = "labels.csv"
GENERIC_TRANSCRIPTS_CSV = "transcripts.csv"
GENERIC_MEDIA_DIR = "media"

# ASR language/control tokens such as <|zh-CN|>, <|en|>, <|nospeech|>
_ASR_TOKEN = re.compile(r"<\|[^|<>]*\|>")


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
    # media files left out because a file with the same stem and a preferred suffix was kept: name -> files
    duplicates: dict[str, list[Path]] = field(default_factory=dict)

    def all(self) -> list[ClipRef]:
        """Labelled clips first, then the pool."""
        return [*self.labelled, *self.unlabelled]


def clean_transcript(text: str | None) -> str | None:
    """`text` without ASR tokens like <|zh-CN|> and surrounding blanks; None when nothing meaningful is left.

    Only punctuation, symbols and blanks count as nothing; English text is kept as it is.
    """
    if text is None:
        return None
    cleaned = _ASR_TOKEN.sub("", text).strip()
    if not any(unicodedata.category(char)[0] in "LN" for char in cleaned):
        return None
    return cleaned


def read_label_csv(path: Path) -> dict[str, str]:
    """Read a `name,discrete` CSV (other columns ignored) into name -> label in LABELS' lower-case form.

    Raises DataError listing every bad row: missing column, empty/unsafe/duplicate name, unknown label.
    """
    path = Path(path)
    _, rows = _read_rows(path, ("name", "discrete"))
    problems: list[str] = []
    labels: dict[str, str] = {}
    for line, name, row in _named_rows(path, rows, problems, "clip"):
        label = (row.get("discrete") or "").strip().lower()
        if label not in LABELS:
            problems.append(
                f"{path}:{line}: unknown label {row.get('discrete')!r} for {name!r} -- "
                f"use one of {', '.join(LABELS)}"
            )
            continue
        labels[name] = label
    _raise_if(path, problems)
    return labels


def read_names_csv(path: Path) -> list[str]:
    """Read a candidate-names CSV (column `name`, others ignored) into names in file order.

    Raises DataError listing every bad row: missing column, empty or unsafe name, duplicate name.
    """
    path = Path(path)
    _, rows = _read_rows(path, ("name",))
    problems: list[str] = []
    names = [name for _, name, _ in _named_rows(path, rows, problems, "clip")]
    _raise_if(path, problems)
    return names


def load_corpus(root: Path, unlabelled_dir: str | None = None) -> Corpus:
    """Read `root` in the MER2024 layout if it has label-disdim.csv, else the generic layout.

    MER2024: labelled names from label-disdim.csv with media in video-labeled/, transcripts from
    label-transcription.csv (preferred) and transcription-merge.csv, the pool from `unlabelled_dir` or the one
    folder whose name starts with "video-unlabeled" or contains "unlabel" (none found: empty pool).
    Generic: media in root or root/media/, labels.csv (name,discrete), optional transcripts.csv (name and text
    or chinese); every media file not in labels.csv joins the pool.
    Returns a Corpus with clip lists sorted by name; a labelled name without media gets status "no_media",
    a clip without a usable transcript "empty_transcript".
    Raises DataError for a missing root, a bad CSV (every bad row listed), a missing `unlabelled_dir` or
    several candidate unlabelled folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found -- pass the folder that holds the clips and CSVs")
    if (root / MER2024_LABELS_CSV).is_file():
        return _load_mer2024(root, unlabelled_dir)
    return _load_generic(root, unlabelled_dir)


def _load_mer2024(root: Path, unlabelled_dir: str | None) -> Corpus:
    labels = read_label_csv(root / MER2024_LABELS_CSV)
    transcripts = _read_transcripts(root / MER2024_ASR_CSV, ("chinese",))
    # checked subtitles win over ASR for the names they cover, unless they are empty and ASR has something
    for name, text in _read_transcripts(root / MER2024_TRANSCRIPTS_CSV, ("chinese",)).items():
        if clean_transcript(text) is not None or name not in transcripts:
            transcripts[name] = text
    duplicates: dict[str, list[Path]] = {}
    labelled_dir = root / MER2024_LABELLED_DIR
    if not labelled_dir.is_dir():
        log.warning("%s: no %s/ folder; every labelled clip gets status no_media", root, MER2024_LABELLED_DIR)
    labelled_media = _list_media([labelled_dir], duplicates)
    pool_dir = _find_unlabelled_dir(root, unlabelled_dir)
    pool_media = _list_media([pool_dir] if pool_dir else [], duplicates)
    # media in video-labeled/ without a label row still belongs to the corpus: it joins the pool
    pool_media = {**{n: p for n, p in labelled_media.items() if n not in labels}, **pool_media}
    return _build(root, "mer2024", labels, labelled_media, pool_media, transcripts, duplicates)


def _load_generic(root: Path, unlabelled_dir: str | None) -> Corpus:
    labels_csv = root / GENERIC_LABELS_CSV
    labels = read_label_csv(labels_csv) if labels_csv.is_file() else {}
    transcripts = _read_transcripts(root / GENERIC_TRANSCRIPTS_CSV, ("text", "chinese"))
    duplicates: dict[str, list[Path]] = {}
    folders = [root / GENERIC_MEDIA_DIR, root]
    if unlabelled_dir is not None:
        folders.append(_find_unlabelled_dir(root, unlabelled_dir))
    media = _list_media(folders, duplicates)
    if not media and not labels:
        raise DataError(
            f"{root}: no {MER2024_LABELS_CSV} (MER2024 layout), no {GENERIC_LABELS_CSV} and no media files "
            f"(generic layout) -- point at the dataset folder itself"
        )
    pool_media = {name: file for name, file in media.items() if name not in labels}
    return _build(root, "generic", labels, media, pool_media, transcripts, duplicates)


def _build(
    root: Path,
    layout: Literal["mer2024", "generic"],
    labels: dict[str, str],
    labelled_media: dict[str, Path],
    pool_media: dict[str, Path],
    transcripts: dict[str, str],
    duplicates: dict[str, list[Path]],
) -> Corpus:
    labelled = [
        _ref(name, labelled_media.get(name), labels[name], transcripts.get(name)) for name in sorted(labels)
    ]
    unlabelled = [
        _ref(name, pool_media[name], None, transcripts.get(name))
        for name in sorted(pool_media)
        if name not in labels
    ]
    missing = sum(ref.path is None for ref in labelled)
    if missing:
        log.warning("%s: %d labelled clips have no media file (status no_media)", root, missing)
    return Corpus(root=root, layout=layout, labelled=labelled, unlabelled=unlabelled, duplicates=duplicates)


def _ref(name: str, path: Path | None, label: str | None, raw_transcript: str | None) -> ClipRef:
    transcript = clean_transcript(raw_transcript)
    status = merge_status(
        ("no_media",) if path is None else (),
        ("empty_transcript",) if transcript is None else (),
    )
    return ClipRef(name=name, path=path, label=label, transcript=transcript, status=status)


def _find_unlabelled_dir(root: Path, unlabelled_dir: str | None) -> Path | None:
    """The pool folder: `unlabelled_dir` under root if given, else the one folder named so, else None."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if unlabelled_dir is not None:
        folder = root / unlabelled_dir
        if not folder.is_dir():
            raise DataError(
                f"{folder}: unlabelled folder not found -- pick one of the folders in {root}: "
                f"{', '.join(folders) or '(none)'}"
            )
        return folder
    found = [n for n in folders if n.lower().startswith("video-unlabeled") or "unlabel" in n.lower()]
    if len(found) > 1:
        raise DataError(
            f"{root}: several unlabelled folders ({', '.join(found)}) -- choose one with unlabelled_dir"
        )
    return root / found[0] if found else None


def _list_media(folders: list[Path], duplicates: dict[str, list[Path]]) -> dict[str, Path]:
    """name -> media file over `folders` (earlier folders first), one file per stem by MEDIA_SUFFIXES order.

    Files left out for a preferred one are added to `duplicates`.
    Raises DataError for file names unsafe as clip names.
    """
    candidates: dict[str, list[Path]] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for file in sorted(folder.iterdir()):
            if file.name.startswith(".") or file.suffix.lower() not in MEDIA_SUFFIXES or not file.is_file():
                continue
            candidates.setdefault(file.stem, []).append(file)
    problems = [
        f"{files[0]}: {problem} -- rename the file"
        for name, files in sorted(candidates.items())
        if (problem := name_problem(name))
    ]
    if problems:
        raise DataError(f"{len(problems)} media file name(s) cannot be clip names:\n" + "\n".join(problems))
    media: dict[str, Path] = {}
    for name, files in candidates.items():
        # stable sort: the folder order breaks ties between equal suffixes
        files = sorted(files, key=lambda f: MEDIA_SUFFIXES.index(f.suffix.lower()))
        media[name] = files[0]
        if len(files) > 1:
            duplicates.setdefault(name, []).extend(files[1:])
            log.info("clip %s has several media files; using %s", name, files[0])
    return media


def _read_transcripts(path: Path, text_columns: tuple[str, ...]) -> dict[str, str]:
    """name -> raw text from a transcript CSV (first of `text_columns` present); {} when the file is absent.

    Raises DataError for a missing name/text column or empty, unsafe or duplicate names.
    """
    if not path.is_file():
        return {}
    columns, rows = _read_rows(path, ("name",))
    column = next((c for c in text_columns if c in columns), None)
    if column is None:
        raise DataError(
            f"{path}:1: no text column -- found columns {', '.join(columns)}; "
            f"the file needs name and one of {', '.join(text_columns)}"
        )
    problems: list[str] = []
    texts = {name: row.get(column) or "" for _, name, row in _named_rows(path, rows, problems, "transcript")}
    _raise_if(path, problems)
    return texts


def _read_rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The lower-cased header, and (line number, row keyed by it) for each non-blank data row.

    Raises DataError when the file is missing, undecodable, empty or lacks a required column.
    """
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}:1: the file is empty -- it needs a header row {','.join(required)}")
            columns = [cell.strip().lower() for cell in header]
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataError(
                    f"{path}:1: missing column(s) {', '.join(missing)} -- found columns "
                    f"{', '.join(columns) or '(none)'}; the file needs {', '.join(required)}"
                )
            rows = []
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue  # blank line
                rows.append((reader.line_num, dict(zip(columns, cells, strict=False))))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found -- check the dataset folder") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc}) -- save it as UTF-8") from None
    return columns, rows


def _named_rows(
    path: Path, rows: list[tuple[int, dict[str, str]]], problems: list[str], what: str
) -> Iterator[tuple[int, str, dict[str, str]]]:
    """Yield (line, name, row) for rows with a non-empty, safe, first-seen name; the rest add problems."""
    first_line: dict[str, int] = {}
    for line, row in rows:
        name = (row.get("name") or "").strip()
        if not name:
            problems.append(f"{path}:{line}: empty name -- fill in the {what}'s name or delete the row")
            continue
        problem = name_problem(name)
        if problem:
            problems.append(f"{path}:{line}: name {name!r} is unsafe as a file name ({problem}) -- rename it")
            continue
        if name in first_line:
            problems.append(
                f"{path}:{line}: duplicate name {name!r}, also on line {first_line[name]} -- "
                f"keep one row per {what}"
            )
            continue
        first_line[name] = line
        yield line, name, row


def _raise_if(path: Path, problems: list[str]) -> None:
    if problems:
        raise DataError(f"{path}: {len(problems)} bad row(s):\n" + "\n".join(problems))
