"""The student's linear member: a standardised multinomial logistic regression on every feature block side by side.

Usage:
    x = linear_design(blocks, masks)                           # (n, sum D_m + M) numpy, missing blocks zeroed
    c = fit_member(model.member, x[rows], y[rows], weights[rows], labelled[rows], inner=inner[rows])

On a few hundred labelled clips such a model is hard to beat (python -m bench.linear prints it beside the
student), so each fold of the student fits one on the fold's training rows and averages its probabilities with
the network's (student.fusion.AttentionFusion.probabilities). It is fitted after the network's epoch is chosen,
on every training row of the fold (the inner validation rows included), pseudo-labelled rows with their weights
and argmax labels: C is chosen on the inner validation rows, like the network's epoch (fits on the other rows along
C_GRID, each warm-started from the last, scored by weighted F1), then one fit on all of them, warm-started from the
chosen one. Nothing of the fold's validation rows is seen. The tolerance and the warm starts make it cost a small
part of the network (python -m bench.student prints both): a 3-fold CV at 1e-4 cost 3 to 4 times the network.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from clips.labels import NUM_LABELS
from student.fusion import LogisticMember

# the inverse L2 strengths the inner CV chooses from
C_GRID = (0.01, 0.05, 0.2, 1.0)
# C when the labelled rows are too few for an inner CV (a class with fewer than 2 rows)
FALLBACK_C = 0.05
# lbfgs stops at this gradient tolerance or after MAX_ITER steps: the member is averaged with a network, and fits to
# 1e-4 took about 3 times the steps for probabilities that differ in the third decimal
TOL = 1e-3
MAX_ITER = 1000
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
               seed: int = 0, inner: np.ndarray | None = None) -> float:
    """Fit `member` on the rows (x, y) with sample `weights`; returns the C it chose.

    With `inner` (rows, bool: a held-out share of the labelled rows, the student's inner validation rows), C is
    chosen on them: logistic regressions on the other rows along C_GRID, each warm-started from the last, scored by
    weighted F1 on the inner rows; then one fit on every row, warm-started from the chosen one. Without, C comes
    from a stratified 3-fold CV on the `labelled` rows (choose_c), five times the fits. Rows of weight 0 are left
    out; with no row left, or a single class, the member stays unfitted.
    """
    keep = weights > 0
    x, y, weights, labelled = x[keep], y[keep], weights[keep], labelled[keep]
    inner = None if inner is None else inner[keep]
    if len(np.unique(y)) < 2:
        return float("nan")
    start = None
    if inner is not None and len(np.unique(y[inner])) >= 2 and len(np.unique(y[~inner])) >= 2:
        c, start = _choose_c_on(x[~inner], y[~inner], weights[~inner], x[inner], y[inner])
    else:
        c = choose_c(x[labelled], y[labelled], seed) if len(np.unique(y[labelled])) >= 2 else FALLBACK_C
    scaler = StandardScaler().fit(x)
    z, basis = row_space(scaler.transform(x))
    model = LogisticRegression(C=c, max_iter=MAX_ITER, tol=TOL, warm_start=True)
    if start is not None and basis is None and np.array_equal(start.classes_, np.unique(y)):
        model.coef_, model.intercept_ = start.coef_.copy(), start.intercept_.copy()
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


def _choose_c_on(x: np.ndarray, y: np.ndarray, weights: np.ndarray, x_val: np.ndarray,
                 y_val: np.ndarray) -> tuple[float, LogisticRegression | None]:
    """The C of C_GRID whose logistic regression on (x, y, weights) has the best weighted F1 on (x_val, y_val),
    fitted from the strongest penalty to the weakest, each warm-started from the last; and that model when it was
    fitted on the features themselves (None when fitted in their row space)."""
    scaler = StandardScaler().fit(x)
    z, basis = row_space(scaler.transform(x))
    z_val = scaler.transform(x_val) if basis is None else scaler.transform(x_val) @ basis.T
    model = LogisticRegression(max_iter=MAX_ITER, tol=TOL, warm_start=True)
    best_c, best_score, best_model = FALLBACK_C, -1.0, None
    for c in sorted(C_GRID):
        model.set_params(C=c)
        with _quiet():
            model.fit(z, y, sample_weight=weights)
        val_score = f1_score(y_val, model.predict(z_val), average="weighted")
        if val_score > best_score:
            best_c, best_score = c, val_score
            best_model = None if basis is not None else copy.deepcopy(model)
    return best_c, best_model


class _quiet(warnings.catch_warnings):
    """Silences sklearn's convergence and small-class warnings: C is chosen among converged and unconverged fits
    alike, and a small class is what small folds have."""

    def __enter__(self):
        super().__enter__()
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)


def predict_labels(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, c: float) -> np.ndarray:
    """(n_test,) labels of `x_test` from a standardised L2 logistic regression with inverse strength `c` fitted on
    (x_train, y_train); the majority class when the training rows hold a single class."""
    classes = np.unique(y_train)
    if len(classes) < 2:
        return np.full(len(x_test), classes[0] if len(classes) else 0, dtype=np.int64)
    scaler = StandardScaler().fit(x_train)
    z, basis = row_space(scaler.transform(x_train))
    model = LogisticRegression(C=c, max_iter=MAX_ITER, tol=TOL)
    with _quiet():
        model.fit(z, y_train)
    test = scaler.transform(x_test)
    return model.predict(test if basis is None else test @ basis.T).astype(np.int64)
