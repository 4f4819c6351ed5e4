"""Extract features for a list of clips: decode each clip once, run every extractor, cache one file per clip.

Usage:
    report = extract_features(corpus.all(), DEFAULT_EXTRACTORS, Path("cache/features"), workers=2)
    report.processed, report.skipped, report.status_counts, report.errors, report.clips_per_second
    features = load_features(Path("cache/features"), DEFAULT_EXTRACTORS, names)
A rerun skips clips whose cache files all validate (without decoding them); an extractor that raises on a clip
gives that clip a missing vector, its modality's missing flag and the error message, and the run goes on.
<cache_root>/status.csv (name,status) merges ref, decoder and extractor flags for every clip seen so far.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from clips import media
from clips.dataset import ClipRef
from clips.io import atomic_write_text, check_name, remove_partials
from clips.media import fit_frames
from clips.status import format_status, merge_status, parse_status
from features.base import (
    DEFAULT_FRAME_SIDE,
    FEATURE_DECODE,
    Extractor,
    FeatureResult,
    cache_key,
    finite_vector,
    frame_side,
    missing,
)
from features.cache import clip_path, read_entry, refresh_index, write_entry, write_meta
from features.registry import build_extractor

STATUS_FILE = "status.csv"
# clips a worker takes at a time: batched extractors (llm_text) embed a chunk's transcripts in padded batches
CHUNK_CLIPS = 16
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class ClipOutcome:
    """What happened to one clip in a run."""

    name: str
    # True when at least one extractor ran (the clip was not fully cached)
    computed: bool
    # merged ref, decoder and extractor flags
    status: tuple[str, ...]
    # (cache key, message) for each extractor that raised
    errors: list[tuple[str, str]] = field(default_factory=list)
    # seconds spent decoding ("decode") and in each extractor (by cache key)
    seconds: dict[str, float] = field(default_factory=dict)
    # the same parts in CPU seconds of the worker process (all its threads): what a part costs on a busy machine
    cpu_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class ExtractionReport:
    """Summary of one extract_features run."""

    processed: int
    skipped: int
    # clips per flag ("ok" for clean clips); a clip with several flags counts under each
    status_counts: dict[str, int]
    # (clip name, cache key or "decode", error message) for every extractor failure and undecodable file
    errors: list[tuple[str, str, str]]
    elapsed: float
    # seconds summed over clips: "decode" and one entry per cache key
    seconds: dict[str, float]
    cache_keys: list[str]
    # CPU seconds of the worker processes summed over clips, by the same parts
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    # seconds from the start of the run at which each processed (not cached) clip finished, in order
    finished: list[float] = field(default_factory=list)

    @property
    def clips_per_second(self) -> float:
        """Processed and skipped clips per wall-clock second."""
        return (self.processed + self.skipped) / max(self.elapsed, 1e-9)

    @property
    def steady_clips_per_second(self) -> float:
        """Processed clips per second over the run's second half: the rate once workers have started and loaded
        their models, which is what a long run goes at (0 with fewer than 4 processed clips)."""
        half = len(self.finished) // 2
        if half < 2:
            return 0.0
        return (len(self.finished) - half) / max(self.finished[-1] - self.finished[half - 1], 1e-9)


def _empty_clip(name: str) -> media.DecodedClip:
    return media.DecodedClip(name=name, audio=None, frames=None, frame_times=None, duration=0.0)


def _checked(result: FeatureResult, dim: int) -> FeatureResult:
    """`result` with its vector checked to be (dim,) and finite; raises ValueError otherwise."""
    if result.vector is None:
        return result
    vector = np.asarray(result.vector, dtype=np.float32)
    if vector.shape != (dim,) or not np.isfinite(vector).all():
        raise ValueError(
            f"extractor returned shape {vector.shape} or non-finite values, expected finite ({dim},)"
        )
    return FeatureResult(finite_vector(vector, dim), tuple(result.status))


def fit_clip(clip: media.DecodedClip, extractor: Extractor) -> media.DecodedClip:
    """`clip` with frames no larger than the visual `extractor`'s frame_side (the decode side is the largest)."""
    if extractor.modality != "visual" or clip.frames is None:
        return clip
    frames = fit_frames(clip.frames, frame_side(extractor))
    return clip if frames is clip.frames else dataclasses.replace(clip, frames=frames)


class ClipWorker:
    """Runs a fixed set of extractors on clips and writes their cache files; one per process."""

    def __init__(self, extractors: list[Extractor], cache_root: Path, num_frames: int) -> None:
        self.extractors = extractors
        self.keys = [cache_key(e) for e in extractors]
        self.cache_root = Path(cache_root)
        self.num_frames = num_frames

    def _decode(self, ref: ClipRef, todo: list[Extractor]) -> tuple[media.DecodedClip, str]:
        """The decoded clip (or an empty one when no pending extractor needs media) and the decode error.

        Frames are decoded at the largest `frame_side` of the pending visual extractors.
        """
        if ref.path is None or all(e.modality == "text" and not getattr(e, "needs_audio", False) for e in todo):
            return _empty_clip(ref.name), ""
        side = max((frame_side(e) for e in todo if e.modality == "visual"), default=DEFAULT_FRAME_SIDE)
        try:
            clip = media.decode_clip(Path(ref.path), name=ref.name, num_frames=self.num_frames, max_side=side,
                                     **FEATURE_DECODE)
        except NotImplementedError:
            raise
        except Exception as err:  # decode_clip should flag broken files itself; this is the last resort
            clip = _empty_clip(ref.name)
            clip.status = ("unreadable",)
            return clip, f"{type(err).__name__}: {err}"
        return clip, clip.error or ""

    def process_chunk(self, refs: Sequence[ClipRef]) -> list[ClipOutcome]:
        """process() each of `refs`, after handing the transcripts of the clips each batched extractor (one with a
        `prepare(transcripts)` method, e.g. llm_text) has still to do to it in one call, so that it runs them in
        padded batches rather than one forward pass per clip. Each clip's cache files are read once, here."""
        entries = [self._entries(ref) for ref in refs]
        for i, extractor in enumerate(self.extractors):
            prepare = getattr(extractor, "prepare", None)
            if prepare is None:
                continue
            try:
                prepare([ref.transcript for ref, cached in zip(refs, entries, strict=True) if cached[i] is None])
            except Exception:  # each clip's extract() then runs alone and records its own error
                continue
        return [self.process(ref, cached) for ref, cached in zip(refs, entries, strict=True)]

    def _entries(self, ref: ClipRef) -> list:
        """The valid cache entry of `ref` per extractor, None where it is missing or its extractor raised (an
        error is retried: the failure may have been transient or fixed since)."""
        name = check_name(ref.name)
        entries = [read_entry(clip_path(self.cache_root, key, name), e.dim)
                   for key, e in zip(self.keys, self.extractors, strict=True)]
        return [entry if entry is not None and not entry.error else None for entry in entries]

    def process(self, ref: ClipRef, entries: list | None = None) -> ClipOutcome:
        """Skip `ref` when every cache file validates, else decode once and run the pending extractors (`entries`:
        what _entries read already)."""
        name = check_name(ref.name)
        paths = [clip_path(self.cache_root, key, name) for key in self.keys]
        entries = self._entries(ref) if entries is None else entries
        todo = [e for e, entry in zip(self.extractors, entries, strict=True) if entry is None]
        if not todo:
            flags = [
                ref.status,
                *(entry.clip_status for entry in entries),
                *(entry.status for entry in entries),
            ]
            return ClipOutcome(name, computed=False, status=merge_status(*flags))

        started, cpu = time.perf_counter(), time.process_time()
        clip, decode_error = self._decode(ref, todo)
        outcome = ClipOutcome(name, computed=True, status=(), seconds={"decode": time.perf_counter() - started},
                              cpu_seconds={"decode": time.process_time() - cpu})
        if decode_error:
            outcome.errors.append(("decode", decode_error))
        clip_status = merge_status(ref.status, clip.status)
        flags = [clip_status]
        for extractor, key, path, entry in zip(self.extractors, self.keys, paths, entries, strict=True):
            if entry is not None:
                flags.append(entry.status)
                continue
            started, cpu = time.perf_counter(), time.process_time()
            error = ""
            try:
                result = _checked(extractor.extract(fit_clip(clip, extractor), ref.transcript), extractor.dim)
            except Exception as err:  # one broken clip must not stop a 120,000-clip run
                error = f"{type(err).__name__}: {err}"
                result = missing(extractor.modality)
                outcome.errors.append((key, error))
            outcome.seconds[key] = time.perf_counter() - started
            outcome.cpu_seconds[key] = time.process_time() - cpu
            # only an extractor's own crash is stored as an error (and retried by a rerun); a file that does not
            # decode is a finished clip whose status says so, or every later stage would decode it again
            write_entry(path, result, extractor.dim, clip_status, error)
            flags.append(result.status)
        outcome.status = merge_status(*flags)
        return outcome


# One ClipWorker per pool process, built by _init_worker: extractors load their models once per process and a
# pool task can only reach per-process state through a module global.
_WORKER: ClipWorker | None = None


def _limit_threads() -> None:
    """One compute thread per worker process: `workers` processes already use the cores.

    The variables reach libraries loaded from here on; numpy's OpenBLAS is already loaded when a spawned worker
    starts, so its pool is capped at run time too: left at one thread per core, a small matrix product (Whisper's
    mel filter bank) wakes threads that spin past it, and Whisper's encoder then cost twice its CPU time.
    """
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    import cv2

    cv2.setNumThreads(1)
    # the embedded extractors run without torch, and importing it only to limit it costs each worker seconds of
    # start-up; torch loaded later by an extractor reads OMP_NUM_THREADS, one loaded already is limited here
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _init_worker(names: Sequence[str], options: dict[str, dict], cache_root: Path, num_frames: int) -> None:
    global _WORKER
    _limit_threads()
    _WORKER = ClipWorker(_build_all(names, options, num_frames), cache_root, num_frames)


def _process_in_worker(refs: list[ClipRef]) -> list[ClipOutcome]:
    assert _WORKER is not None, "pool worker used before _init_worker"
    return _WORKER.process_chunk(refs)


def _build_all(names: Sequence[str], options: dict[str, dict], num_frames: int) -> list[Extractor]:
    return [build_extractor(name, num_frames=num_frames, **options.get(name, {})) for name in names]


def write_status_csv(cache_root: Path, statuses: dict[str, tuple[str, ...]]) -> Path:
    """Merge `statuses` (name -> flags) into <cache_root>/status.csv, keeping rows of other clips.

    Returns:
        the path of status.csv.
    """
    path = Path(cache_root) / STATUS_FILE
    rows: dict[str, str] = {}
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            rows = {row["name"]: format_status(parse_status(row["status"])) for row in csv.DictReader(handle)}
    rows.update({name: format_status(status) for name, status in statuses.items()})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "status"])
    writer.writerows(rows.items())
    atomic_write_text(path, buffer.getvalue())
    return path


def _split_cached(
    refs: list[ClipRef], extractors: list[Extractor], keys: list[str], cache_root: Path, progress: bool
) -> tuple[list[ClipOutcome], list[ClipRef]]:
    """(outcomes of the clips whose every cache entry is valid and error-free, the refs still to process).

    Reads each folder's index (refresh_index re-reads only clip files newer than it), not 3 x 120,000 files.
    """
    indexes = [refresh_index(cache_root, key, e.dim, progress=progress) for e, key in zip(extractors, keys,
                                                                                           strict=True)]
    positions = [index.rows() for index in indexes]
    cached: list[ClipOutcome] = []
    todo: list[ClipRef] = []
    for ref in refs:
        rows = [position.get(ref.name, -1) for position in positions]
        if any(row < 0 or index.failed[row] for row, index in zip(rows, indexes, strict=True)):
            todo.append(ref)
            continue
        flags = [ref.status]
        for row, index in zip(rows, indexes, strict=True):
            flags += [parse_status(str(index.clip_status[row])), parse_status(str(index.status[row]))]
        cached.append(ClipOutcome(ref.name, computed=False, status=merge_status(*flags)))
    return cached, todo


def _outcomes(
    refs: list[ClipRef],
    names: Sequence[str],
    options: dict[str, dict],
    cache_root: Path,
    workers: int,
    num_frames: int,
) -> Iterator[ClipOutcome]:
    """Outcomes in completion order, in this process (workers=1) or a pool of spawned processes."""
    if not refs:
        return
    # chunks of clips: batched extractors (llm_text) run a chunk's transcripts in padded batches, so a chunk holds
    # at least one batch of the largest batch_size asked for
    chunk = max([CHUNK_CLIPS, *(int(o.get("batch_size", 0)) for o in options.values())])
    size = max(1, min(chunk, len(refs) // workers))
    chunks = [refs[begin:begin + size] for begin in range(0, len(refs), size)]
    if workers <= 1:
        worker = ClipWorker(_build_all(names, options, num_frames), cache_root, num_frames)
        for chunk in chunks:
            yield from worker.process_chunk(chunk)
        return
    # spawn, not fork: the parent may hold torch or OpenMP threads, which a forked child inherits broken
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, _init_worker, (tuple(names), options, Path(cache_root), num_frames)) as pool:
        for outcomes in pool.imap_unordered(_process_in_worker, chunks):
            yield from outcomes


class RayClipWorker:
    """A ClipWorker as a Ray Data actor: `map_batches` hands it batches of clip rows, it returns outcome rows."""

    def __init__(self, names: Sequence[str], options: dict[str, dict], cache_root: str, num_frames: int) -> None:
        _limit_threads()
        self.worker = ClipWorker(_build_all(names, options, num_frames), Path(cache_root), num_frames)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        outcomes = self.worker.process_chunk([
            ClipRef(name=str(name), path=Path(path) if path else None, label=None,
                    transcript=str(text) if text else None, status=parse_status(str(status)))
            for name, path, text, status in zip(batch["name"], batch["path"], batch["transcript"], batch["status"],
                                                strict=True)
        ])
        return {
            "name": [o.name for o in outcomes],
            "computed": [o.computed for o in outcomes],
            "status": [format_status(o.status) for o in outcomes],
            "errors": [json.dumps(o.errors) for o in outcomes],
            "seconds": [json.dumps(o.seconds) for o in outcomes],
            "cpu_seconds": [json.dumps(o.cpu_seconds) for o in outcomes],
        }


def _outcomes_ray(
    refs: list[ClipRef], names: Sequence[str], options: dict[str, dict], cache_root: Path, workers: int,
    num_frames: int,
) -> Iterator[ClipOutcome]:
    """Outcomes from `workers` Ray Data actors (CPU, one thread each); uses the running Ray, else starts one."""
    import ray

    if not refs:
        return
    if not ray.is_initialized():
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    items = [{"name": r.name, "path": str(r.path) if r.path else "", "transcript": r.transcript or "",
              "status": format_status(r.status)} for r in refs]
    dataset = ray.data.from_items(items).map_batches(
        RayClipWorker, fn_constructor_args=(tuple(names), options, str(cache_root), num_frames),
        concurrency=workers, batch_size=8, num_cpus=1,
    )
    for row in dataset.iter_rows():
        yield ClipOutcome(str(row["name"]), bool(row["computed"]), parse_status(str(row["status"])),
                          [tuple(e) for e in json.loads(row["errors"])], json.loads(row["seconds"]),
                          json.loads(row["cpu_seconds"]))


def extract_features(
    refs: list[ClipRef],
    extractor_names: Sequence[str],
    cache_root: Path,
    workers: int = 2,
    num_frames: int = 8,
    progress: bool = True,
    extractor_options: dict[str, dict] | None = None,
    engine: Literal["local", "ray"] = "local",
) -> ExtractionReport:
    """Extract and cache every extractor's features for `refs`; see the module docstring.

    `engine` "local" uses `workers` processes of this machine; "ray" spreads clips over `workers` Ray Data
    actors (pip install -e ".[ray]"), on the Ray cluster already initialised or a local one. Both write the
    same cache files.

    Returns:
        an ExtractionReport (counts, per-status counts, errors, timings).
    Raises:
        ValueError: for an unknown extractor, option or engine, a duplicate or unsafe clip name, or workers < 1.
        ImportError: for engine "ray" without ray installed.
    """
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f"workers={workers}: use 1 (in-process) or more worker processes")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine={engine!r}: use 'local' or 'ray'")
    options = dict(extractor_options or {})
    unknown = sorted(set(options) - set(extractor_names))
    if unknown:
        raise ValueError(f"extractor_options for {unknown} but extractors are {list(extractor_names)}")
    duplicates = sorted(name for name, count in Counter(ref.name for ref in refs).items() if count > 1)
    if duplicates:
        raise ValueError(
            f"{len(duplicates)} clip name(s) appear twice, e.g. {duplicates[:3]}; names must be unique"
        )
    for ref in refs:
        check_name(ref.name)
    cache_root = Path(cache_root)
    # the parent builds extractors only for their keys and meta.json; models load lazily in the workers
    extractors = _build_all(extractor_names, options, num_frames)
    keys = [write_meta(cache_root, e) for e in extractors]
    for folder in (cache_root, *(cache_root / key for key in keys)):
        remove_partials(folder)  # what a killed run was writing; the run redoes those clips

    started = time.perf_counter()
    cached, todo = _split_cached(refs, extractors, keys, cache_root, progress)
    statuses: dict[str, tuple[str, ...]] = {}
    status_counts: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    cpu_seconds: Counter[str] = Counter()
    errors: list[tuple[str, str, str]] = []
    processed = skipped = 0
    finished: list[float] = []
    run_todo = _outcomes_ray if engine == "ray" else _outcomes
    outcomes = itertools.chain(cached, run_todo(todo, extractor_names, options, cache_root, workers, num_frames))
    for outcome in tqdm(outcomes, total=len(refs), disable=not progress, unit="clip", desc="features"):
        statuses[outcome.name] = outcome.status
        status_counts.update(outcome.status or ("ok",))
        seconds.update(outcome.seconds)
        cpu_seconds.update(outcome.cpu_seconds)
        errors.extend((outcome.name, key, message) for key, message in outcome.errors)
        processed += outcome.computed
        skipped += not outcome.computed
        if outcome.computed:
            finished.append(time.perf_counter() - started)
    write_status_csv(cache_root, {ref.name: statuses[ref.name] for ref in refs})
    if todo:
        # consolidate what this run wrote, so later stages load the features without reading clip files
        for extractor, key in zip(extractors, keys, strict=True):
            refresh_index(cache_root, key, extractor.dim, progress=progress)
    return ExtractionReport(
        processed=processed,
        skipped=skipped,
        status_counts=dict(status_counts),
        errors=errors,
        elapsed=time.perf_counter() - started,
        seconds=dict(seconds),
        cpu_seconds=dict(cpu_seconds),
        finished=finished,
        cache_keys=keys,
    )
