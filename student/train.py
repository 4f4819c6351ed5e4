"""Training the fusion student with 5-fold CV on the labelled clips plus every pseudo-labelled clip.

Usage:
    cfg = StudentConfig(epochs=60)
    result = train_student(blocks, masks, targets, weights, is_labelled, cfg)
    print(format_scores(result.scores))        # out-of-fold scores on the labelled clips only
    probs = predict_student(result, pool_blocks, pool_masks)   # (N, 6) mean of the folds' softmax
    save_student(result, Path("runs/student"))
    result = load_student(Path("runs/student"))

Inputs, one row per training example: `blocks` is a list of (N, D_m) float arrays (one per feature extractor),
`masks` (N, M) bool says which blocks are present, `targets` (N, 6) are label distributions (one-hot for
labelled clips), `weights` (N,) scale each row's loss, `is_labelled` (N,) marks the human-labelled rows.
`fold_of` (N,) gives each labelled row its CV fold (the run's assignment, clips.folds; None: a stratified split
by cfg.folds and cfg.seed) and each pseudo-labelled row the one fold whose training set it joins (-1: every
fold), so fold k can train on pseudo-labels made by teachers that never saw fold k's labels. A pseudo-labelled
row never validates. Rows with weight 0 are left out of training (and of the input statistics) altogether.

Early stopping never looks at the fold it reports: within each fold a stratified share (cfg.inner_val) of the
labelled training rows is held out as an inner validation set; the epoch is chosen on it and the reported
out-of-fold probabilities come from that epoch's model on the outer fold, so the 5-fold WAF is an estimate, not a
maximum over epochs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from sklearn.metrics import f1_score
from torch import Tensor
from tqdm.auto import tqdm

from clips.config import from_dict, to_dict
from clips.folds import stratified_folds
from clips.io import atomic_write_bytes, atomic_write_text
from clips.labels import LABELS, NUM_LABELS
from clips.scoring import Scores, score
from student.fusion import AttentionFusion, LogisticMember
from student.linear import fit_member

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
    # a linear layer on the standardised inputs beside the MLPs, its logits added to theirs
    linear_path: bool = True
    # each fold also fits a logistic regression (student.linear) on all its training rows once the network's
    # epoch is chosen, and averages its probabilities with the network's: the network alone lost to that linear
    # model on small labelled sets (python -m bench.linear)
    linear_member: bool = True
    # the linear member is fitted on every labelled training row and a seeded sample of the pseudo-labelled ones,
    # this many rows in all (None: every row): at 20,000 rows of 2,030 features its fit cost 1.5 times the network
    # (python -m bench.student); the demo's folds hold under 1,000
    member_rows: int | None = 10_000
    # Adam learning rate
    lr: float = 1e-3
    # Adam L2 penalty (the baseline's 1e-5; 1e-3 with the inner-split epoch choice beat both 1e-5 and logistic
    # regression on the demo corpora's 120-150 labelled clips, python -m bench.linear)
    weight_decay: float = 1e-3
    # validation passes per fold; the best on the fold's inner validation rows is kept
    epochs: int = 60
    # stop a fold after this many epochs without a better inner validation score (None: run every epoch); chosen
    # epochs on the demo corpora of seeds 11 and 12 were 1 to 46, mostly under 10, and 10 ran half the epochs of 20
    # for the same 5-fold WAF (0.768 and 0.692 against 0.753 and 0.694)
    patience: int | None = 10
    # share of each fold's labelled training rows held out (stratified) to choose the epoch; the reported
    # out-of-fold scores never take part in the choice
    inner_val: float = 0.2
    # what chooses the epoch on the inner validation rows: "waf" (the baseline's rule) or "loss" (cross-entropy;
    # on small sets it picks the first few epochs, before the model is confident, and scored lower)
    select: Literal["loss", "waf"] = "waf"
    # rows per optimiser step (the baseline's 32)
    batch_size: int = 32
    # stratified CV folds over the labelled rows when train_student gets no fold assignment (distill uses the
    # run's, clips.folds, and refuses a different count here)
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
        if not 0.0 < self.inner_val < 0.5:
            problems.append(f"inner_val={self.inner_val}: use a share in (0, 0.5), e.g. 0.2")
        if self.select not in ("loss", "waf"):
            problems.append(f"select={self.select!r}: use 'loss' or 'waf'")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience={self.patience}: must be at least 1, or null to run every epoch")
        if self.batch_growth is not None and self.batch_growth < 1:
            problems.append(f"batch_growth={self.batch_growth}: must be at least 1, or null for a fixed batch")
        if self.member_rows is not None and self.member_rows < 1:
            problems.append(f"member_rows={self.member_rows}: must be at least 1, or null for every row")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            problems.append(f"max_steps_per_epoch={self.max_steps_per_epoch}: must be at least 1, or null")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            problems.append(f"device={self.device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if problems:
            raise ValueError("StudentConfig: " + "; ".join(problems))


@dataclass
class FoldResult:
    """One fold's best model and how it was chosen."""

    # state dict of the epoch chosen on the inner validation rows (normalisation buffers included)
    state: dict[str, Tensor]
    # 0-based epoch of that state
    best_epoch: int
    # its inner validation score (WAF, or minus the cross-entropy when cfg.select is "loss")
    best_score: float
    # input-row indices of the fold's validation rows (labelled rows only)
    val_rows: np.ndarray
    # inner validation score after every epoch
    history: list[float] = field(default_factory=list)
    # WAF of the chosen epoch on the fold's (outer) validation rows: reported, never used to choose
    val_waf: float = float("nan")
    # wall seconds of each part of the fold: "network" (the epochs), "member" (the linear member's fit), "report"
    # (predicting the fold's validation rows)
    seconds: dict[str, float] = field(default_factory=dict)


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
    fold_of: np.ndarray,
    row_of: np.ndarray,
) -> None:
    """Raise ValueError listing every shape or value problem of train_student's inputs."""
    problems = []
    rows, n = len(masks), len(targets)
    if masks.ndim != 2 or masks.dtype != bool or masks.shape[1] != len(blocks):
        problems.append(
            f"masks must be (R, {len(blocks)}) bool, one column per block; got {masks.shape} {masks.dtype}"
        )
    for m, block in enumerate(blocks):
        if block.ndim != 2 or len(block) != rows:
            problems.append(f"blocks[{m}] must be (R={rows}, D) like masks; got {block.shape}")
        elif masks.ndim == 2 and m < masks.shape[1] and not _present_rows_finite(block, masks[:, m]):
            problems.append(f"blocks[{m}] has NaN/inf in rows marked present; mark them missing in masks")
    if targets.ndim != 2 or targets.shape[1] != NUM_LABELS:
        problems.append(f"targets must be (N, {NUM_LABELS}); got {targets.shape}")
    elif not (
        np.isfinite(targets).all() and (targets >= 0).all() and np.allclose(targets.sum(axis=1), 1, atol=1e-3)
    ):
        problems.append("targets rows must be non-negative and sum to 1 (label distributions)")
    if weights.shape != (n,) or not np.isfinite(weights).all() or (weights < 0).any():
        problems.append(f"weights must be (N={n},) finite and non-negative; got shape {weights.shape}")
    if row_of.shape != (n,) or (n and (row_of.min() < 0 or row_of.max() >= rows)):
        problems.append(f"row_of must be (N={n},) indices into the {rows} feature rows; got {row_of.shape}")
    if is_labelled.shape != (n,) or is_labelled.dtype != bool:
        problems.append(f"is_labelled must be (N={n},) bool; got {is_labelled.shape} {is_labelled.dtype}")
    elif fold_of.shape != (n,):
        problems.append(f"fold_of must be (N={n},) fold indices; got {fold_of.shape}")
    else:
        labelled_folds = fold_of[is_labelled]
        folds = int(labelled_folds.max()) + 1 if len(labelled_folds) else 0
        if folds < 2 or labelled_folds.min() < 0:
            problems.append(f"fold_of must give every labelled row a fold in [0, K) with K >= 2; got "
                            f"{sorted(set(labelled_folds.tolist()))[:10]}")
        elif missing := sorted(set(range(folds)) - set(labelled_folds.tolist())):
            problems.append(f"fold(s) {missing} hold no labelled row; every fold needs validation rows")
        pseudo_folds = fold_of[~is_labelled]
        if len(pseudo_folds) and (pseudo_folds.min() < -1 or pseudo_folds.max() >= max(folds, 1)):
            problems.append("fold_of of a pseudo-labelled row must be -1 (every fold) or the fold it trains")
    if problems:
        raise ValueError("train_student inputs: " + "; ".join(problems))


def fold_rows(
    targets: np.ndarray, weights: np.ndarray, is_labelled: np.ndarray, fold_of: np.ndarray, inner_val: float,
    seed: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(train_rows, inner_rows, val_rows) example indices per fold.

    Validation rows are the labelled rows of the fold; inner validation rows a stratified `inner_val` share of the
    other labelled rows (weight > 0), seeded by `seed` and the fold; training rows the remaining labelled rows plus
    the pseudo-labelled rows (weight > 0) of the fold or of every fold (fold_of -1).
    """
    folds = int(fold_of[is_labelled].max()) + 1
    splits = []
    for k in range(folds):
        val = np.flatnonzero(is_labelled & (fold_of == k))
        rest = np.flatnonzero(is_labelled & (fold_of != k) & (weights > 0))
        classes = targets[rest].argmax(axis=1)
        inner_folds = max(2, round(1 / inner_val))
        inner_mask = stratified_folds(classes, inner_folds, seed * 1000 + k) == 0 if len(rest) >= inner_folds \
            else np.zeros(len(rest), dtype=bool)
        pseudo = np.flatnonzero(~is_labelled & (weights > 0) & ((fold_of == k) | (fold_of == -1)))
        splits.append((np.concatenate([rest[~inner_mask], pseudo]), rest[inner_mask], val))
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
class _Tensors:
    """Training inputs as tensors on the training device: feature rows, and examples that point into them."""

    # (R, D_m) per block and (R, M) masks: one row per clip
    blocks: list[Tensor]
    masks: Tensor
    # (N, 6), (N,) and (N,): one row per training example; a clip may be an example in several folds
    targets: Tensor
    weights: Tensor
    row_of: Tensor

    def inputs(self, examples: Tensor) -> tuple[list[Tensor], Tensor]:
        """The blocks and masks of `examples`."""
        rows = self.row_of[examples]
        return [block[rows] for block in self.blocks], self.masks[rows]


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
        dims, hidden=cfg.hidden, dropout=cfg.dropout, modality_dropout=cfg.modality_dropout,
        linear_path=cfg.linear_path, linear_member=cfg.linear_member,
    )


def loss_step(model: AttentionFusion, optimizer: torch.optim.Optimizer, data: _Tensors, rows: Tensor) -> Tensor:
    """One optimiser step on the training examples `rows`; returns the detached batch loss."""
    logits = model(*data.inputs(rows))  # (B, 6)
    loss = soft_cross_entropy(logits, data.targets[rows], data.weights[rows])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate(
    model: AttentionFusion, blocks: Sequence[Tensor], masks: Tensor, batch_size: int = _EVAL_BATCH
) -> Tensor:
    """Probabilities (N, 6) of `model` in eval mode (AttentionFusion.probabilities), in big batches, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    probs = []
    for start in range(0, len(masks), batch_size):
        part = slice(start, start + batch_size)
        probs.append(model.probabilities([b[part].to(device) for b in blocks], masks[part].to(device)).cpu())
    return torch.cat(probs) if probs else torch.zeros(0, NUM_LABELS)


def _selection_score(probs: Tensor, truth: np.ndarray, select: str) -> float:
    """Higher is better: inner validation WAF, or minus its mean cross-entropy."""
    if select == "waf":
        return float(f1_score(truth, probs.argmax(dim=1).numpy(), average="weighted"))
    return -float(-torch.log(probs[torch.arange(len(truth)), torch.from_numpy(truth)].clamp_min(1e-8)).mean())


def _train_fold(
    fold: int,
    data: _Tensors,
    split: tuple[np.ndarray, np.ndarray, np.ndarray],
    labelled_train: np.ndarray,
    cfg: StudentConfig,
    bar: tqdm,
) -> tuple[FoldResult, Tensor]:
    """Train one fold, choosing the epoch on its inner validation rows; returns its result and the chosen
    epoch's probabilities (n_val, 6) of the fold's validation rows.

    Raises ValueError when the fold has no training row with weight > 0.
    """
    train_rows, inner_rows, val_rows = split
    if len(train_rows) == 0:
        raise ValueError(f"fold {fold} has no training row with weight > 0; give some rows a positive weight")
    device = data.masks.device
    torch.manual_seed(cfg.seed * 1000 + fold)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + fold)
    train_index = torch.from_numpy(train_rows).to(device)
    # with too few labelled rows for an inner split the last epoch is kept (nothing to choose on)
    inner_blocks, inner_masks = data.inputs(torch.from_numpy(inner_rows).to(device))
    inner_truth = data.targets[torch.from_numpy(inner_rows).to(device)].argmax(dim=1).cpu().numpy()
    val_blocks, val_masks = data.inputs(torch.from_numpy(val_rows).to(device))
    val_truth = data.targets[torch.from_numpy(val_rows).to(device)].argmax(dim=1).cpu().numpy()

    # setup: input statistics from this fold's training rows only, then the optimiser
    model = _new_model(cfg, [b.shape[1] for b in data.blocks]).to(device)
    model.fit_normalisation(data.blocks, data.masks, rows=data.row_of[train_index])
    # fused: one kernel over all parameters instead of several small ops per parameter at every step
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    sampler = _RowSampler(train_index, generator)
    steps = steps_per_epoch(cfg, len(train_rows), int(labelled_train.sum()))
    batch = batch_rows(cfg, len(train_rows))

    best = FoldResult(state={}, best_epoch=-1, best_score=-math.inf, val_rows=val_rows)
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        # train: `steps` batches drawn from the carried-over shuffled order
        model.train()
        epoch_rows = sampler.take(steps * batch).to(device).view(steps, batch)  # (steps, B)
        train_loss = torch.zeros((), device=device)
        for rows in epoch_rows:
            train_loss += loss_step(model, optimizer, data, rows)

        # choose: the inner validation rows only; the fold's own rows play no part
        inner_score = (_selection_score(evaluate(model, inner_blocks, inner_masks), inner_truth, cfg.select)
                       if len(inner_rows) else float(epoch))
        best.history.append(inner_score)
        if inner_score > best.best_score:
            best.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best.best_epoch, best.best_score = epoch, inner_score

        bar.set_postfix(fold=fold, loss=f"{train_loss.item() / steps:.3f}", inner=f"{inner_score:.4f}",
                        best=f"{best.best_score:.4f}")
        bar.update(1)
        if cfg.patience is not None and epoch - best.best_epoch >= cfg.patience:
            bar.update(cfg.epochs - epoch - 1)
            break

    model.load_state_dict(best.state)
    best.seconds["network"] = time.perf_counter() - start
    start = time.perf_counter()
    if model.member is not None:
        # the linear member, once the network's epoch is chosen, on every training row of the fold: the inner
        # validation rows too, which the network spent on choosing its epoch
        member_rows = _member_rows(train_rows, inner_rows, labelled_train, cfg)
        labelled = np.concatenate([labelled_train, np.ones(len(inner_rows), bool)])[member_rows]
        inner = member_rows >= len(train_rows)
        rows = torch.from_numpy(np.concatenate([train_rows, inner_rows])[member_rows]).to(device)
        member_blocks, member_masks = data.inputs(rows)
        fit_member(model.member, LogisticMember.design(member_blocks, member_masks).cpu().numpy(),
                   data.targets[rows].argmax(dim=1).cpu().numpy(), data.weights[rows].cpu().numpy(),
                   labelled, seed=cfg.seed, inner=inner)
        best.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    best.seconds["member"] = time.perf_counter() - start
    start = time.perf_counter()
    # report: the chosen epoch's model (and its linear member) on the fold's validation rows
    val_probs = evaluate(model, val_blocks, val_masks)
    best.val_waf = float(f1_score(val_truth, val_probs.argmax(dim=1).numpy(), average="weighted"))
    best.seconds["report"] = time.perf_counter() - start
    return best, val_probs


def _member_rows(train_rows: np.ndarray, inner_rows: np.ndarray, labelled_train: np.ndarray,
                 cfg: StudentConfig) -> np.ndarray:
    """Positions in concat(train_rows, inner_rows) the linear member is fitted on: every labelled row, and a sample
    (seeded by cfg.seed) of the pseudo-labelled ones up to cfg.member_rows rows in all; sorted."""
    total = len(train_rows) + len(inner_rows)
    if cfg.member_rows is None or total <= cfg.member_rows:
        return np.arange(total)
    pseudo = np.flatnonzero(~labelled_train)
    labelled = np.setdiff1d(np.arange(total), pseudo)
    room = max(cfg.member_rows - len(labelled), 0)
    sample = np.random.default_rng(cfg.seed).choice(pseudo, size=min(room, len(pseudo)), replace=False)
    return np.sort(np.concatenate([labelled, sample]))


def train_student(
    blocks: list[np.ndarray],
    masks: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    is_labelled: np.ndarray,
    cfg: StudentConfig,
    progress: bool = True,
    fold_of: np.ndarray | None = None,
    row_of: np.ndarray | None = None,
) -> StudentResult:
    """Cross-validated training of AttentionFusion; see the module docstring for the inputs.

    `row_of` (N,) points each example at its feature row of `blocks`/`masks` (None: example i is row i), so a
    pool clip that is a pseudo-labelled example of several folds is stored once.
    Returns the chosen-epoch state of every fold and the out-of-fold scores on the labelled rows.
    Raises ValueError naming every malformed input.
    """
    masks, weights, is_labelled = np.asarray(masks), np.asarray(weights, np.float32), np.asarray(is_labelled)
    targets = np.asarray(targets, np.float32)
    row_of = np.arange(len(targets)) if row_of is None else np.asarray(row_of, dtype=np.int64)
    if fold_of is None:
        fold_of = np.full(len(targets), -1, dtype=np.int64)
        if is_labelled.shape == (len(targets),) and targets.ndim == 2 and is_labelled.sum() >= cfg.folds:
            fold_of[is_labelled] = stratified_folds(targets[is_labelled].argmax(axis=1), cfg.folds, cfg.seed)
    fold_of = np.asarray(fold_of, dtype=np.int64)
    _check_inputs(blocks, masks, targets, weights, is_labelled, fold_of, row_of)
    device = pick_device(cfg.device)
    # from_numpy shares memory with float32 inputs; only the device copy (if any) allocates
    data = _Tensors(
        blocks=[torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)).to(device) for b in blocks],
        masks=torch.from_numpy(masks).to(device),
        targets=torch.from_numpy(targets).to(device),
        weights=torch.from_numpy(weights).to(device),
        row_of=torch.from_numpy(row_of).to(device),
    )
    labelled = np.flatnonzero(is_labelled)
    position = np.full(len(targets), -1)
    position[labelled] = np.arange(len(labelled))  # example -> row of oof_probs
    oof_probs = np.zeros((len(labelled), NUM_LABELS), dtype=np.float32)

    folds = []
    splits = fold_rows(targets, weights, is_labelled, fold_of, cfg.inner_val, cfg.seed)
    with (
        _cpu_threads(device, cfg.batch_size),
        tqdm(total=len(splits) * cfg.epochs, desc="student", disable=not progress) as bar,
    ):
        for fold, split in enumerate(splits):
            result, val_probs = _train_fold(fold, data, split, is_labelled[split[0]], cfg, bar)
            oof_probs[position[split[2]]] = val_probs.numpy()
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
    return predict_folds(result, blocks, masks, batch_size).mean(axis=1)


def predict_folds(
    result: StudentResult, blocks: list[np.ndarray], masks: np.ndarray, batch_size: int = _EVAL_BATCH
) -> np.ndarray:
    """(N, K, 6) each fold model's softmax outputs for `blocks`/`masks`: fold k's model never saw fold k's labels,
    so these are the student's pool scores when it becomes an agent (a second round of pseudo-labelling).

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
        return torch.stack([evaluate(model, tensors, mask_tensor, batch_size)
                            for model in _fold_models(result, device)], dim=1).numpy()


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
                "best_score": f.best_score,
                "val_waf": f.val_waf,
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
                best_score=fold["best_score"],
                val_waf=fold["val_waf"],
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
