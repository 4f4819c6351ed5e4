"""Label-prior correction of an LLM teacher's label probabilities, so that a model that says "worried" to every
line does not.

Usage:
    requests = content_free_requests(family, tokenizer, RequestSettings(view="text", language="zh"))
    prior = scorer.scores(requests)[0].mean(0)                 # (6,) what the model says to no content at all
    probs = prior_correct(probs, prior)                        # (n, 6) renormalised probs / prior

Two estimates of the model's label prior, both fixed by principle rather than tuned on the scored clips:
- content-free (Zhao et al. 2021, "Calibrate before use"): the mean probabilities the model gives lines that say
  nothing ("N/A", "[MASK]", an ellipsis) under the same prompt; dividing by them makes a content-free line
  uniform. It needs no labels, so it is the same for every clip and every fold.
- fitted on the training folds: for fold k, the model's mean probabilities over the labelled clips of the other
  folds against those clips' label frequencies (the label-shift correction of Saerens et al. 2002 with the
  training folds' prior as the target). It needs labels, so it is the filter's first calibration step, for every
  agent (pseudo.calibration.fit_prior, cross-fitted by pseudo.measure.fold_calibrations; FilterConfig.prior).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm.families import Family
from llm.requests import ClipMedia, Request, RequestSettings, build_request

# lines with no content: the null, the mask and an ellipsis (Zhao et al. use "N/A", "" and "[MASK]"; a text view
# needs a non-empty line, so the ellipsis stands in for the empty one)
CONTENT_FREE: tuple[str, ...] = ("N/A", "[MASK]", "……")
# floor on a prior probability: a label the model never says is not divided by zero
PRIOR_FLOOR = 1e-4


def content_free_requests(family: Family, processor, settings: RequestSettings,
                          lines: Sequence[str] = CONTENT_FREE) -> list[Request]:
    """The requests of the content-free `lines` under the agent's prompt (text view: the line is the transcript).

    Raises ValueError for a view other than "text": a content-free audio or video clip is not defined here.
    """
    if settings.view != "text":
        raise ValueError(f"content-free calibration needs the text view (view={settings.view!r}); use "
                         "calibration: none for media views")
    requests = [build_request(family, processor, ClipMedia(name=f"content-free-{i}", audio=None, frames=None,
                                                           transcript=line), settings)
                for i, line in enumerate(lines)]
    return [r for r in requests if r is not None]


def prior_weights(prior: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """target / prior per label (target: uniform when None), the prior floored at PRIOR_FLOOR."""
    prior = np.maximum(np.asarray(prior, dtype=np.float64), PRIOR_FLOOR)
    return (np.ones_like(prior) if target is None else np.asarray(target, dtype=np.float64)) / prior


def reweight(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """probs * weights renormalised over the last axis (float32); NaN rows stay NaN, a row whose weighted mass is 0
    (every label it gives weighted 0) stays as it was."""
    probs = np.asarray(probs, dtype=np.float64)
    scaled = probs * weights
    total = scaled.sum(axis=-1, keepdims=True)
    return np.where(total > 0, scaled / np.where(total > 0, total, 1.0), probs).astype(np.float32)


def prior_correct(probs: np.ndarray, prior: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """(n, 6) probabilities -> probs * target / prior, renormalised per row (target: uniform when None).

    `prior` is (6,) or (n, 6) (one per row); NaN rows stay NaN.
    """
    return reweight(probs, prior_weights(prior, target))

