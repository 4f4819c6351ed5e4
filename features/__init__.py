"""Utterance-level features per clip and modality, cached one file per clip; the inputs of the feature agents
and of the student, and the `features` stage (features.stage) that fills the cache for a run.

Usage:
    from features import DEFAULT_EXTRACTORS, extract_features, load_features
    report = extract_features(refs, DEFAULT_EXTRACTORS, cache_root, workers=2)
    features = load_features(cache_root, DEFAULT_EXTRACTORS, [ref.name for ref in refs])
"""

from features.base import Extractor, FeatureResult, cache_key
from features.cache import FeatureSet, load_features
from features.registry import DEFAULT_EXTRACTORS, EXTRACTORS, build_extractor
from features.runner import ExtractionReport, extract_features

__all__ = [
    "DEFAULT_EXTRACTORS",
    "EXTRACTORS",
    "ExtractionReport",
    "Extractor",
    "FeatureResult",
    "FeatureSet",
    "build_extractor",
    "cache_key",
    "extract_features",
    "load_features",
]
