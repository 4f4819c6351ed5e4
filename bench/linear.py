"""The fusion student against logistic regression on the same cached features: 5-fold WAF side by side.

Usage:
    .venv/bin/python -m bench.linear --data demo-run/data --run demo-run/run
    .venv/bin/python -m bench.linear --data mer2024-dataset --run runs/a --config features.yaml --seeds 3

For any labelled corpus: extracts (or reads the cached) features of the labelled clips, takes the run's fold
assignment (run/folds.csv, written when absent), and scores, on the same folds, every model out of fold:
    linear      standardised logistic regression on all blocks side by side (a missing block zeroed, plus a
                presence column per block), C chosen by an inner 3-fold CV on each training fold only;
    linear/<m>  the same on one modality's blocks (what the feature agents are);
    student     the default fusion student (its epoch chosen on an inner split), mean +- sd over --seeds.
Nothing is chosen on the fold that is scored, so the numbers compare honestly.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clips.config import load_config
from clips.dataset import load_corpus
from clips.folds import run_folds
from clips.labels import label_index
from clips.scoring import score
from features.stage import FeaturesConfig, load_run_features, run_features
from student.linear import C_GRID, linear_design
from student.train import StudentConfig, train_student


def linear_oof(x: np.ndarray, y: np.ndarray, fold_of: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n,) out-of-fold predictions of a standardised logistic regression, C chosen on each training fold."""
    predicted = np.zeros(len(y), dtype=np.int64)
    for k in range(int(fold_of.max()) + 1):
        train, held = fold_of != k, fold_of == k
        inner = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=list(C_GRID), cv=inner, max_iter=2000,
                                                                     scoring="f1_weighted"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            model.fit(x[train], y[train])
        predicted[held] = model.predict(x[held])
    return predicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="Labelled corpus (MER2024 or generic layout).")
    parser.add_argument("--run", type=Path, required=True, help="Run folder: feature cache and fold assignment.")
    parser.add_argument("--config", type=Path, help="YAML of the run's common settings (features, folds).")
    parser.add_argument("--seeds", type=int, default=1, help="Student seeds (mean +- sd).")
    parser.add_argument("--epochs", type=int, help="Student epochs (default: StudentConfig's).")
    args = parser.parse_args()

    cfg = load_config(FeaturesConfig, args.config, {"data": args.data, "run": args.run, "progress": False})
    corpus = load_corpus(cfg.data, cfg.unlabelled_dir)
    labels = {r.name: r.label for r in corpus.labelled}
    names = [r.name for r in corpus.labelled]
    y = np.array([label_index(labels[n]) for n in names], dtype=np.int64)
    fold_of = run_folds(cfg.run, labels, cfg.folds, cfg.fold_seed).of(names)
    run_features(corpus, cfg.run, cfg.features, progress=False)
    features = load_run_features(cfg.run, cfg.features, names)
    print(f"{len(names)} labelled clips, {cfg.folds} folds (run/folds.csv), extractors {features.extractors}")

    rows = []
    started = time.perf_counter()
    predicted = linear_oof(linear_design(features.blocks, features.masks), y, fold_of)
    rows.append(("linear (all blocks)", [score(y, predicted).waf], time.perf_counter() - started))
    for modality in dict.fromkeys(features.modalities):
        chosen = [i for i, m in enumerate(features.modalities) if m == modality]
        present = features.masks[:, chosen].any(axis=1)
        x = linear_design([features.blocks[i] for i in chosen], features.masks[:, chosen])
        predicted = linear_oof(x, y, fold_of)
        # a clip without the modality gets its training folds' majority class, as the student would give its prior
        majority = np.array([np.bincount(y[fold_of != k]).argmax() for k in range(int(fold_of.max()) + 1)])
        rows.append((f"linear/{modality}", [score(y, np.where(present, predicted, majority[fold_of])).waf], 0.0))

    student = StudentConfig(device="cpu", folds=cfg.folds)
    if args.epochs:
        student = dataclasses.replace(student, epochs=args.epochs)
    onehot = np.eye(6, dtype=np.float32)[y]
    wafs, started = [], time.perf_counter()
    for seed in range(args.seeds):
        result = train_student(features.blocks, features.masks, onehot, np.ones(len(y), np.float32),
                               np.ones(len(y), bool), dataclasses.replace(student, seed=seed), progress=False,
                               fold_of=fold_of)
        wafs.append(result.scores.waf)
    rows.append(("student (default config)", wafs, (time.perf_counter() - started) / args.seeds))

    print(f"{'model':<28}{'5-fold WAF':>22}{'seconds':>10}")
    for name, values, seconds in rows:
        sd = f" +- {np.std(values, ddof=1):.4f}" if len(values) > 1 else ""
        print(f"{name:<28}{np.mean(values):>14.4f}{sd:<8}{seconds:>10.1f}")


if __name__ == "__main__":
    main()
