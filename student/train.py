"""Training the fusion student with 5-fold CV on the labelled clips plus every pseudo-labelled clip.

Usage:
    cfg = StudentConfig(epochs=60)
    result = train_student(blocks, masks, targets, weights, is_labelled, cfg)
    print(format_scores(result.scores))        # out-of-fold scores on the labelled clips only
    probs = predict_student(result, pool_blocks, pool_masks)   # (N, 6) mean of the folds' softmax
    save_student(result, Path("runs/student"))
    result = load_student(Path("runs/student"))

Inputs, one row per clip: `blocks` is a list of (N, D_m) float arrays (one per feature extractor),
`masks` (N, M) bool says which blocks are present, `targets` (N, 6) are label distributions (one-hot for
labelled clips), `weights` (N,) scale each row's loss, `is_labelled` (N,) marks the human-labelled rows.
CV folds split the labelled rows only; every pseudo-labelled row joins every fold's training set and no
validation set, so out-of-fold scores see no pseudo-label. Rows with weight 0 are left out of training (and
of the input statistics) altogether.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from torch import Tensor
from tqdm.auto import tqdm

from clips.config import from_dict, to_dict
from clips.io import atomic_write_bytes, atomic_write_text
from clips.labels import LABELS, NUM_LABELS
from clips.scoring import Scores, score
from student.fusion import AttentionFusion

log = logging.getLogger(__name__)

_META_FILE = "student.json"
_OOF_FILE = "oof.safetensors"
# rows per forward pass when evaluating or predicting: big batches, no autograd
_EVAL_BATCH = 8192
# passes of fewer rows than this run on one CPU thread (see _cpu_threads)
_PARALLEL_MIN_ROWS = 1024


@dataclass
class StudentConfig:
    """Settings of the fusion student and its cross-validated training."""

    # width of every encoder layer and of the fused vector
    hidden: int = 128
    # dropout on each encoder's input (and on the attention MLP's input)
    dropout: float = 0.3
    # probability of hiding each present modality of a training row (a row always keeps one)
    modality_dropout: float = 0.2
    # Adam learning rate
    lr: float = 1e-3
    # Adam L2 penalty (the baseline's 1e-5)
    weight_decay: float = 1e-5
    # validation passes per fold; the best by validation WAF is kept
    epochs: int = 60
    # stop a fold after this many epochs without a better validation WAF (None: always run every epoch)
    patience: int | None = 20
    # rows per optimiser step (the baseline's 32)
    batch_size: int = 32
    # stratified CV folds over the labelled rows
    folds: int = 5
    # seeds the fold split, initialisation, dropout and batch order
    seed: int = 0
    # optimiser steps per epoch, at most one pass over the fold's training rows; None: as many steps as one
    # pass over its LABELLED training rows takes (ceil(n_labelled_train / batch_size)), the baseline's epoch,
    # so an epoch costs the same however many pseudo-labelled rows join. Batches come from one shuffled order
    # of all training rows that carries over epochs: every row is visited before any row repeats.
    max_steps_per_epoch: int | None = None
    # with many pseudo-labelled rows the batch grows to ceil(training rows / batch_growth) when that exceeds
    # batch_size: an epoch still covers about as many rows, in fewer, larger steps (a CPU step is overhead-bound,
    # about 8 ms at 32 rows and 11 ms at 128); None keeps batch_size always
    batch_growth: int | None = 1024
    # "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"
    device: str = "auto"

    def __post_init__(self) -> None:
        problems = []
        for name in ("hidden", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: must be at least 1")
        for name in ("dropout", "modality_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name}={getattr(self, name)}: must be in [0, 1)")
        if self.lr <= 0:
            problems.append(f"lr={self.lr}: must be positive, e.g. 1e-3")
        if self.weight_decay < 0:
            problems.append(f"weight_decay={self.weight_decay}: must be 0 or positive")
        if self.folds < 2:
            problems.append(f"folds={self.folds}: cross-validation needs at least 2")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience={self.patience}: must be at least 1, or null to run every epoch")
        if self.batch_growth is not None and self.batch_growth < 1:
            problems.append(f"batch_growth={self.batch_growth}: must be at least 1, or null for a fixed batch")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            problems.append(f"max_steps_per_epoch={self.max_steps_per_epoch}: must be at least 1, or null")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            problems.append(f"device={self.device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if problems:
            raise ValueError("StudentConfig: " + "; ".join(problems))


@dataclass
class FoldResult:
    """One fold's best model and how it was chosen."""

    # state dict of the epoch with the best validation WAF (normalisation buffers included)
    state: dict[str, Tensor]
    # 0-based epoch of that state
    best_epoch: int
    # its validation WAF
    best_waf: float
    # input-row indices of the fold's validation rows (labelled rows only)
    val_rows: np.ndarray
    # validation WAF after every epoch
    history: list[float] = field(default_factory=list)


@dataclass
class StudentResult:
    """The fold models of one training run and their out-of-fold scores on the labelled rows."""

    config: StudentConfig
    # feature size of each block, in input order
    dims: list[int]
    folds: list[FoldResult]
    # (n_labelled, 6) softmax of each labelled row from the fold that held it out, rows in input order
    oof_probs: np.ndarray
    # out-of-fold scores: oof_probs' argmax against the labelled rows' argmax targets
    scores: Scores


def pick_device(name: str) -> torch.device:
    """torch.device for a config's `device`: 'auto' is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available; use device='auto' or 'cpu'")
    return torch.device(name)


@contextmanager
def _cpu_threads(device: torch.device, rows_per_pass: int) -> Iterator[None]:
    """Set torch's CPU threads for passes of `rows_per_pass` rows, restoring the previous setting after.

    Intra-op threads pay only on big matrices: on a 2-core machine shared with other jobs, 32-row training
    steps ran 5 to 10 times slower on 2 threads than on 1 (threads spin at every op's barrier), while
    8192-row prediction passes gain. So small passes get 1 thread and big ones every CPU this process may
    use (torch's default counts the machine's cores and ignores affinity limits).
    """
    previous = torch.get_num_threads()
    if device.type == "cpu":
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else previous
        torch.set_num_threads(1 if rows_per_pass < _PARALLEL_MIN_ROWS else max(1, min(previous, available)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def soft_cross_entropy(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_i * CE(softmax(logits_i), targets_i) / sum_i w_i; 0 when every weight is 0.

    logits (B, 6), targets (B, 6) distributions, weights (B,) non-negative.
    """
    per_row = F.cross_entropy(logits, targets, reduction="none")  # (B,)
    return (weights * per_row).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)


def _present_rows_finite(block: np.ndarray, present: np.ndarray, chunk: int = 16384) -> bool:
    """True when every row of `block` marked `present` is finite; chunked so no copy of the block is made."""
    for start in range(0, len(block), chunk):
        part = slice(start, start + chunk)
        if not (np.isfinite(block[part]).all(axis=1) | ~present[part]).all():
            return False
    return True


def _check_inputs(
    blocks: Sequence[np.ndarray],
    masks: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    is_labelled: np.ndarray,
    folds: int,
) -> None:
    """Raise ValueError listing every shape or value problem of train_student's inputs."""
    problems = []
    n = len(masks)
    if masks.ndim != 2 or masks.dtype != bool or masks.shape[1] != len(blocks):
        problems.append(
            f"masks must be (N, {len(blocks)}) bool, one column per block; got {masks.shape} {masks.dtype}"
        )
    for m, block in enumerate(blocks):
        if block.ndim != 2 or len(block) != n:
            problems.append(f"blocks[{m}] must be (N={n}, D); got {block.shape}")
        elif masks.ndim == 2 and m < masks.shape[1] and not _present_rows_finite(block, masks[:, m]):
            problems.append(f"blocks[{m}] has NaN/inf in rows marked present; mark them missing in masks")
    if targets.shape != (n, NUM_LABELS):
        problems.append(f"targets must be (N={n}, {NUM_LABELS}); got {targets.shape}")
    elif not (
        np.isfinite(targets).all() and (targets >= 0).all() and np.allclose(targets.sum(axis=1), 1, atol=1e-3)
    ):
        problems.append("targets rows must be non-negative and sum to 1 (label distributions)")
    if weights.shape != (n,) or not np.isfinite(weights).all() or (weights < 0).any():
        problems.append(f"weights must be (N={n},) finite and non-negative; got shape {weights.shape}")
    if is_labelled.shape != (n,) or is_labelled.dtype != bool:
        problems.append(f"is_labelled must be (N={n},) bool; got {is_labelled.shape} {is_labelled.dtype}")
    elif is_labelled.sum() < folds:
        problems.append(f"{int(is_labelled.sum())} labelled row(s) cannot fill {folds} folds; lower folds")
    if problems:
        raise ValueError("train_student inputs: " + "; ".join(problems))


def fold_rows(
    targets: np.ndarray, weights: np.ndarray, is_labelled: np.ndarray, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_rows, val_rows) input-row indices per fold.

    Validation rows are a stratified (by argmax target) split of the labelled rows; training rows are the
    other labelled rows plus every pseudo-labelled row, all with weight > 0.
    """
    labelled = np.flatnonzero(is_labelled)
    pseudo = np.flatnonzero(~is_labelled & (weights > 0))
    classes = targets[labelled].argmax(axis=1)
    smallest = np.bincount(classes)[np.unique(classes)].min()
    if smallest < folds:
        log.info("a class has only %d labelled rows for %d folds: some folds validate without it", smallest, folds)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        fold_positions = list(splitter.split(labelled, classes))
    for train_pos, val_pos in fold_positions:
        train_labelled = labelled[train_pos][weights[labelled[train_pos]] > 0]
        splits.append((np.concatenate([train_labelled, pseudo]), labelled[val_pos]))
    return splits


def batch_rows(cfg: StudentConfig, n_train: int) -> int:
    """Rows per optimiser step for a fold of `n_train` training rows (see StudentConfig.batch_growth)."""
    grown = math.ceil(n_train / cfg.batch_growth) if cfg.batch_growth else 0
    return max(1, min(max(cfg.batch_size, grown), n_train))


def steps_per_epoch(cfg: StudentConfig, n_train: int, n_labelled_train: int) -> int:
    """Optimiser steps per epoch under cfg.max_steps_per_epoch (see StudentConfig)."""
    batch = batch_rows(cfg, n_train)
    full_pass = math.ceil(n_train / batch)
    cap = cfg.max_steps_per_epoch or math.ceil(max(n_labelled_train, 1) / batch)
    return max(1, min(full_pass, cap))


@dataclass
class _Data:
    """Training inputs as tensors on the training device."""

    blocks: list[Tensor]
    masks: Tensor
    targets: Tensor
    weights: Tensor


class _RowSampler:
    """Batches of training rows from a shuffled order that carries over epochs and reshuffles when used up."""

    def __init__(self, rows: Tensor, generator: torch.Generator) -> None:
        self.rows = rows
        self.generator = generator
        self.order = rows[:0]
        self.position = 0

    def take(self, count: int) -> Tensor:
        """The next `count` rows of the order, reshuffling as often as needed."""
        pieces = []
        while count > 0:
            if self.position == len(self.order):
                self.order = self.rows[torch.randperm(len(self.rows), generator=self.generator)]
                self.position = 0
            piece = self.order[self.position : self.position + count]
            self.position += len(piece)
            count -= len(piece)
            pieces.append(piece)
        return torch.cat(pieces)


def _new_model(cfg: StudentConfig, dims: Sequence[int]) -> AttentionFusion:
    return AttentionFusion(
        dims, hidden=cfg.hidden, dropout=cfg.dropout, modality_dropout=cfg.modality_dropout
    )


def loss_step(model: AttentionFusion, optimizer: torch.optim.Optimizer, data: _Data, rows: Tensor) -> Tensor:
    """One optimiser step on the training `rows`; returns the detached batch loss."""
    logits = model([block[rows] for block in data.blocks], data.masks[rows])  # (B, 6)
    loss = soft_cross_entropy(logits, data.targets[rows], data.weights[rows])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate(
    model: AttentionFusion, blocks: Sequence[Tensor], masks: Tensor, batch_size: int = _EVAL_BATCH
) -> Tensor:
    """Softmax probabilities (N, 6) of `model` in eval mode, computed in big batches, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    probs = []
    for start in range(0, len(masks), batch_size):
        part = slice(start, start + batch_size)
        logits = model([b[part].to(device) for b in blocks], masks[part].to(device))  # (b, 6)
        probs.append(torch.softmax(logits, dim=1).cpu())
    return torch.cat(probs) if probs else torch.zeros(0, NUM_LABELS)


def _train_fold(
    fold: int,
    data: _Data,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    n_labelled_train: int,
    cfg: StudentConfig,
    bar: tqdm,
) -> tuple[FoldResult, Tensor]:
    """Train one fold; returns its result and the best epoch's validation probabilities (n_val, 6).

    Raises ValueError when the fold has no training row with weight > 0.
    """
    if len(train_rows) == 0:
        raise ValueError(f"fold {fold} has no training row with weight > 0; give some rows a positive weight")
    device = data.masks.device
    torch.manual_seed(cfg.seed * 1000 + fold)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + fold)
    train_index = torch.from_numpy(train_rows).to(device)
    val_index = torch.from_numpy(val_rows).to(device)
    val_blocks = [block[val_index] for block in data.blocks]
    val_masks = data.masks[val_index]
    val_truth = data.targets[val_index].argmax(dim=1).cpu().numpy()

    # setup: input statistics from this fold's training rows only, then the optimiser
    model = _new_model(cfg, [b.shape[1] for b in data.blocks]).to(device)
    model.fit_normalisation(data.blocks, data.masks, rows=train_index)
    # fused: one kernel over all parameters instead of several small ops per parameter at every step
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    sampler = _RowSampler(train_index, generator)
    steps = steps_per_epoch(cfg, len(train_rows), n_labelled_train)
    batch = batch_rows(cfg, len(train_rows))

    best = FoldResult(state={}, best_epoch=-1, best_waf=-1.0, val_rows=val_rows)
    best_probs = torch.zeros(len(val_rows), NUM_LABELS)
    for epoch in range(cfg.epochs):
        # train: `steps` batches drawn from the carried-over shuffled order
        model.train()
        epoch_rows = sampler.take(steps * batch).to(device).view(steps, batch)  # (steps, B)
        train_loss = torch.zeros((), device=device)
        for rows in epoch_rows:
            train_loss += loss_step(model, optimizer, data, rows)

        # validate: the whole held-out fold in big batches; keep the best epoch's weights and probabilities
        val_probs = evaluate(model, val_blocks, val_masks)
        val_waf = float(f1_score(val_truth, val_probs.argmax(dim=1).numpy(), average="weighted"))
        best.history.append(val_waf)
        if val_waf > best.best_waf:
            best.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best.best_epoch, best.best_waf, best_probs = epoch, val_waf, val_probs

        bar.set_postfix(
            fold=fold,
            loss=f"{train_loss.item() / steps:.3f}",
            val_waf=f"{val_waf:.4f}",
            best=f"{best.best_waf:.4f}",
        )
        bar.update(1)
        if cfg.patience is not None and epoch - best.best_epoch >= cfg.patience:
            bar.update(cfg.epochs - epoch - 1)
            break
    return best, best_probs


def train_student(
    blocks: list[np.ndarray],
    masks: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    is_labelled: np.ndarray,
    cfg: StudentConfig,
    progress: bool = True,
) -> StudentResult:
    """Cross-validated training of AttentionFusion; see the module docstring for the inputs.

    Returns the best-epoch state of every fold and the out-of-fold scores on the labelled rows.
    Raises ValueError naming every malformed input.
    """
    masks, weights, is_labelled = np.asarray(masks), np.asarray(weights, np.float32), np.asarray(is_labelled)
    targets = np.asarray(targets, np.float32)
    _check_inputs(blocks, masks, targets, weights, is_labelled, cfg.folds)
    device = pick_device(cfg.device)
    # from_numpy shares memory with float32 inputs; only the device copy (if any) allocates
    data = _Data(
        blocks=[torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)).to(device) for b in blocks],
        masks=torch.from_numpy(masks).to(device),
        targets=torch.from_numpy(targets).to(device),
        weights=torch.from_numpy(weights).to(device),
    )
    labelled = np.flatnonzero(is_labelled)
    position = np.full(len(masks), -1)
    position[labelled] = np.arange(len(labelled))  # input row -> row of oof_probs
    oof_probs = np.zeros((len(labelled), NUM_LABELS), dtype=np.float32)

    folds = []
    splits = fold_rows(targets, weights, is_labelled, cfg.folds, cfg.seed)
    with (
        _cpu_threads(device, cfg.batch_size),
        tqdm(total=cfg.folds * cfg.epochs, desc="student", disable=not progress) as bar,
    ):
        for fold, (train_rows, val_rows) in enumerate(splits):
            n_labelled_train = int(is_labelled[train_rows].sum())
            result, val_probs = _train_fold(fold, data, train_rows, val_rows, n_labelled_train, cfg, bar)
            oof_probs[position[val_rows]] = val_probs.numpy()
            folds.append(result)

    oof = score(targets[labelled].argmax(axis=1), oof_probs.argmax(axis=1))
    return StudentResult(
        config=cfg, dims=[b.shape[1] for b in blocks], folds=folds, oof_probs=oof_probs, scores=oof
    )


def _fold_models(result: StudentResult, device: torch.device) -> list[AttentionFusion]:
    models = []
    for fold in result.folds:
        model = _new_model(result.config, result.dims)
        model.load_state_dict(fold.state)
        models.append(model.to(device).eval())
    return models


def predict_student(
    result: StudentResult, blocks: list[np.ndarray], masks: np.ndarray, batch_size: int = _EVAL_BATCH
) -> np.ndarray:
    """(N, 6) mean over the fold models of their softmax outputs for `blocks`/`masks` (as in train_student).

    Raises ValueError when the blocks do not match the trained feature sizes.
    """
    masks = np.asarray(masks)
    dims = [b.shape[1] if b.ndim == 2 else -1 for b in blocks]
    if (
        dims != result.dims
        or masks.shape != (len(masks), len(dims))
        or any(len(b) != len(masks) for b in blocks)
    ):
        raise ValueError(
            f"predict_student: the model takes blocks of sizes {result.dims} with masks "
            f"(N, {len(result.dims)}); got sizes {dims}, rows {[len(b) for b in blocks]}, masks {masks.shape}"
        )
    device = pick_device(result.config.device)
    tensors = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)) for b in blocks]
    mask_tensor = torch.from_numpy(masks.astype(bool))
    with _cpu_threads(device, batch_size):
        models = _fold_models(result, device)
        total = torch.zeros(len(masks), NUM_LABELS)
        for model in models:
            total += evaluate(model, tensors, mask_tensor, batch_size)
    return (total / len(models)).numpy()


def save_student(result: StudentResult, directory: Path) -> None:
    """Write fold_K.safetensors per fold, oof.safetensors, and student.json (config, dims, fold metrics,
    out-of-fold scores) into `directory`."""
    directory = Path(directory)
    for k, fold in enumerate(result.folds):
        atomic_write_bytes(
            directory / f"fold_{k}.safetensors", save({n: t.contiguous() for n, t in fold.state.items()})
        )
    atomic_write_bytes(directory / _OOF_FILE, save({"oof_probs": torch.from_numpy(result.oof_probs)}))
    meta = {
        "config": to_dict(result.config),
        "dims": result.dims,
        "labels": list(LABELS),
        "folds": [
            {
                "best_epoch": f.best_epoch,
                "best_waf": f.best_waf,
                "val_rows": f.val_rows.tolist(),
                "history": f.history,
            }
            for f in result.folds
        ],
        "oof": {
            "waf": result.scores.waf,
            "accuracy": result.scores.accuracy,
            "per_class_f1": result.scores.per_class_f1,
            "support": result.scores.support,
            "confusion": result.scores.confusion.tolist(),
        },
    }
    atomic_write_text(directory / _META_FILE, json.dumps(meta, indent=1) + "\n")


def load_student(directory: Path) -> StudentResult:
    """The StudentResult that save_student wrote to `directory`.

    Raises FileNotFoundError naming a missing file, ValueError when the files do not fit together.
    """
    directory = Path(directory)
    meta_path = directory / _META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: is {directory} a folder written by save_student?")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("labels") != list(LABELS):
        raise ValueError(
            f"{meta_path}: labels {meta.get('labels')} differ from {list(LABELS)}; retrain the student"
        )
    cfg = from_dict(StudentConfig, meta["config"], where=str(meta_path))
    folds = []
    for k, fold in enumerate(meta["folds"]):
        path = directory / f"fold_{k}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found but {meta_path} lists {len(meta['folds'])} folds")
        folds.append(
            FoldResult(
                state=load_file(path),
                best_epoch=fold["best_epoch"],
                best_waf=fold["best_waf"],
                val_rows=np.asarray(fold["val_rows"], dtype=np.int64),
                history=fold["history"],
            )
        )
    oof = meta["oof"]
    scores = Scores(
        waf=oof["waf"],
        accuracy=oof["accuracy"],
        per_class_f1=oof["per_class_f1"],
        support=oof["support"],
        confusion=np.asarray(oof["confusion"], dtype=np.int64),
    )
    oof_probs = load_file(directory / _OOF_FILE)["oof_probs"].numpy()
    dims = list(meta["dims"])
    result = StudentResult(config=cfg, dims=dims, folds=folds, oof_probs=oof_probs, scores=scores)
    # building the models fails here, naming the keys, if a state dict does not fit the model
    _fold_models(result, torch.device("cpu"))
    return result
