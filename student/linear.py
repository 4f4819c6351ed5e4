"""The student's linear member: a standardised multinomial logistic regression on every feature block side by side.

Usage:
    x = linear_design(blocks, masks)                           # (n, sum D_m + M) numpy, missing blocks zeroed
    c = fit_member(model.member, x[train], y[train], weights[train], labelled[train], seed=0)

On a few hundred labelled clips such a model is hard to beat (python -m bench.linear prints it beside the
student), so each fold of the student fits one on the fold's training rows and averages its probabilities with
the network's (student.fusion.AttentionFusion.probabilities). It is fitted after the network's epoch is chosen,
on every training row of the fold (the inner validation rows included): C by a stratified 3-fold CV on the
labelled ones alone (weighted F1), then one fit on all of them, pseudo-labelled rows with their weights and argmax
labels. Nothing of the fold's validation rows is seen.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from clips.labels import NUM_LABELS
from student.fusion import LogisticMember

# the inverse L2 strengths the inner CV chooses from
C_GRID = (0.01, 0.05, 0.2, 1.0)
# C when the labelled rows are too few for an inner CV (a class with fewer than 2 rows)
FALLBACK_C = 0.05
# logit given to a class with no training row: never predicted
_ABSENT = -1e4


def linear_design(blocks: list[np.ndarray], masks: np.ndarray) -> np.ndarray:
    """(n, sum D_m + M) float32 numpy: LogisticMember.design of numpy blocks and masks (the blocks side by side, a
    missing block zeroed, plus one presence column per block)."""
    tensors = [torch.from_numpy(np.ascontiguousarray(b)) for b in blocks]
    return LogisticMember.design(tensors, torch.from_numpy(np.asarray(masks, dtype=bool))).numpy()


def row_space(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(z, basis) with x = z @ basis when x (n, d) has fewer rows than columns: z (n, r) are x's coordinates in an
    orthonormal basis (r, d) of its row space; else (x, None): nothing to gain.

    An L2-penalised logistic regression's weights lie in the row space of its training rows, so it fits exactly the
    same model on z (weights w there are w @ basis in x's space, with the same penalty) at a fraction of the cost
    when there are far more features than clips; the same holds for a fit on any subset of the rows.
    """
    n, d = x.shape
    if n >= d:
        return x, None
    _, singular, basis = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    basis = basis[singular > singular.max(initial=0.0) * 1e-10]  # (r, d)
    return x @ basis.T, basis


def choose_c(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """C of C_GRID with the best weighted F1 in a stratified CV of standardised logistic regressions on (x, y),
    with up to 3 folds; FALLBACK_C when a class has a single row."""
    folds = min(3, int(np.bincount(y)[np.unique(y)].min()))
    if folds < 2:
        return FALLBACK_C
    scaled = row_space(StandardScaler().fit_transform(x))[0]
    search = LogisticRegressionCV(Cs=list(C_GRID), cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                  max_iter=2000, scoring="f1_weighted")
    with _quiet():
        search.fit(scaled, y)
    return float(np.atleast_1d(search.C_)[0])


def fit_member(member: LogisticMember, x: np.ndarray, y: np.ndarray, weights: np.ndarray, labelled: np.ndarray,
               seed: int = 0) -> float:
    """Fit `member` on the rows (x, y) with sample `weights`, C chosen on the `labelled` rows; returns C.

    Rows of weight 0 are left out; with no row left, or a single class, the member stays unfitted.
    """
    keep = weights > 0
    x, y, weights, labelled = x[keep], y[keep], weights[keep], labelled[keep]
    if len(np.unique(y)) < 2:
        return float("nan")
    c = choose_c(x[labelled], y[labelled], seed) if len(np.unique(y[labelled])) >= 2 else FALLBACK_C
    scaler = StandardScaler().fit(x)
    z, basis = row_space(scaler.transform(x))
    model = LogisticRegression(C=c, max_iter=2000)
    with _quiet():
        model.fit(z, y, sample_weight=weights)
    coef = np.zeros((NUM_LABELS, x.shape[1]), np.float32)
    intercept = np.full(NUM_LABELS, _ABSENT, np.float32)
    coef[model.classes_] = model.coef_ if basis is None else model.coef_ @ basis
    intercept[model.classes_] = model.intercept_
    with torch.no_grad():
        for name, value in (("mean", scaler.mean_), ("scale", scaler.scale_), ("coef", coef),
                            ("intercept", intercept)):
            buffer = getattr(member, name)
            buffer.copy_(torch.as_tensor(np.asarray(value, np.float32), device=buffer.device))
        member.fitted.fill_(1.0)
    return c


class _quiet(warnings.catch_warnings):
    """Silences sklearn's convergence and small-class warnings: C is chosen among converged and unconverged fits
    alike, and a small class is what small folds have."""

    def __enter__(self):
        super().__enter__()
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
