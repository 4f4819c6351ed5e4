"""`features`: extract and cache the utterance-level features of every clip of a corpus.

Usage:
    report = run_features(load_corpus(data), run=Path("runs/a"), settings=FeatureSettings())
    report = features_stage(FeaturesConfig(data=Path("mer2024-dataset"), run=Path("runs/a")))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clips.dataset import Corpus, load_corpus
from clips.run import RunPaths
from features import (
    DEFAULT_EXTRACTORS,
    EXTRACTORS,
    ExtractionReport,
    FeatureSet,
    build_extractor,
    cache_key,
    extract_features,
    load_features,
)


@dataclass
class FeatureSettings:
    """Which features every stage reads; stages of one run must use the same settings."""

    # extractor names from the registry (features.EXTRACTORS)
    extractors: tuple[str, ...] = DEFAULT_EXTRACTORS
    # options per extractor, e.g. {"hubert": {"model": "/models/chinese-hubert-large"}}
    extractor_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # worker processes
    workers: int = 2
    # frames sampled per clip
    num_frames: int = 8
    # "local": `workers` processes here; "ray": `workers` Ray Data actors (pip install -e ".[ray]")
    engine: Literal["local", "ray"] = "local"

    def keys(self) -> list[str]:
        """Cache folder of each extractor: its name plus a hash of its settings (building loads no model)."""
        return [cache_key(build_extractor(name, num_frames=self.num_frames, **self.extractor_options.get(name, {})))
                for name in self.extractors]

    def __post_init__(self) -> None:
        self.extractors = tuple(self.extractors)
        unknown = [e for e in (*self.extractors, *self.extractor_options) if e not in EXTRACTORS]
        if unknown:
            raise ValueError(f"extractors: unknown {unknown}; available: {', '.join(sorted(EXTRACTORS))}")
        if not self.extractors:
            raise ValueError("extractors: the list is empty; name at least one (e.g. egemaps)")
        if self.workers < 1:
            raise ValueError(f"workers={self.workers}; use 1 or more")
        if self.num_frames < 1:
            raise ValueError(f"num_frames={self.num_frames}; use 1 or more")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine={self.engine!r}; use local or ray")


@dataclass
class RunConfig:
    """What every stage of a run reads: the dataset, the run folder and the feature settings."""

    # dataset folder (MER2024 release layout or a generic folder)
    data: Path
    # run folder that holds features, agent outputs, models and the submission
    run: Path
    # the unlabelled folder's name inside `data`; found automatically when None
    unlabelled_dir: str | None = None
    # extractors and their options; the stages of one run must use the same
    features: FeatureSettings = field(default_factory=FeatureSettings)
    # stratified CV folds over the labelled clips, written once to run/folds.csv and read by every stage that fits
    # on labels (feature agents, calibration, filter measurement, the student); a change needs a new run
    folds: int = 5
    # seed of that fold assignment
    fold_seed: int = 0
    # show progress bars
    progress: bool = True


@dataclass
class FeaturesConfig(RunConfig):
    """Settings of the `features` command: the run's common settings alone."""


def run_features(corpus: Corpus, run: Path, settings: FeatureSettings, progress: bool = True) -> ExtractionReport:
    """Extract the configured features of every clip into run/features (cached clips are skipped)."""
    return extract_features(
        corpus.all(), settings.extractors, RunPaths(run).features, workers=settings.workers,
        num_frames=settings.num_frames, progress=progress, extractor_options=settings.extractor_options,
        engine=settings.engine,
    )


def load_run_features(run: Path, settings: FeatureSettings, names: list[str]) -> FeatureSet:
    """The cached features of `names`, rows in that order."""
    return load_features(RunPaths(run).features, settings.keys(), names)


def features_stage(cfg: FeaturesConfig) -> ExtractionReport:
    """The `features` command: load the corpus and extract."""
    return run_features(load_corpus(cfg.data, cfg.unlabelled_dir), cfg.run, cfg.features, cfg.progress)
