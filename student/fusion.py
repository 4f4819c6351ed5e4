"""Attention fusion over per-modality feature vectors: the student model of the pipeline.

Usage:
    model = AttentionFusion(dims=[88, 1024, 534, 384], hidden=128, dropout=0.3, modality_dropout=0.2)
    model.fit_normalisation(blocks, masks, rows=train_rows)   # training rows only; kept as buffers
    logits = model(blocks, masks)   # blocks: list of (B, D_m) floats, masks: (B, M) bool -> (B, 6)

The shape follows the MER2024 official baseline (MERTools `Attention`): a 3-layer MLP encoder per feature
block, an attention MLP over the concatenated hidden vectors giving one score per modality, the
score-weighted sum of the hidden vectors, and a linear classifier. Added here, because the pool has clips
without a face or without speech: a softmax over the scores with missing modalities masked out, modality
dropout in training, and input standardisation whose mean/std live in buffers so that a saved state dict
carries them. Optional, on by default in the student (student.train): a linear path (one linear layer on the
standardised inputs, its logits added to the classifier's) and a logistic-regression member fitted outside torch
(student.linear) whose probabilities `probabilities()` averages with the network's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from clips.labels import NUM_LABELS

# std below this counts as a constant feature, which then standardises to 0 instead of blowing up
_MIN_STD = 1e-6


def _mlp(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """The baseline's MLPEncoder: dropout on the input, then three Linear+ReLU layers."""
    layers: list[nn.Module] = [nn.Dropout(dropout)]
    for layer_in in (in_dim, hidden, hidden):
        layers += [nn.Linear(layer_in, hidden), nn.ReLU()]
    return nn.Sequential(*layers)


def drop_modalities(masks: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Copy of `masks` (B, M) bool with each present modality dropped with probability `p`.

    A row that had at least one modality keeps at least one: when every present modality of a row is drawn for
    dropping, the one with the largest draw (uniform among them) is kept. Rows with none present stay empty.
    """
    draws = torch.rand(masks.shape, generator=generator, device=masks.device)  # (B, M)
    kept = masks & (draws >= p)
    emptied = masks.any(dim=1) & ~kept.any(dim=1)  # (B,)
    rescue = torch.where(masks, draws, -1.0).argmax(dim=1)  # (B,) the present modality with the largest draw
    rescued = nn.functional.one_hot(rescue, masks.shape[1]).bool() & emptied.unsqueeze(1)  # (B, M)
    return kept | rescued


class Standardise(nn.Module):
    """(x - mean) / std with mean and std as buffers (saved with the model, never trained)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class LogisticMember(nn.Module):
    """A multinomial logistic regression fitted outside torch (student.linear.fit_member), kept as buffers so a
    saved state dict carries it: logits of the standardised design (blocks side by side, a missing block zeroed,
    one presence column per block)."""

    def __init__(self, in_dim: int, num_classes: int = NUM_LABELS) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        self.register_buffer("coef", torch.zeros(num_classes, in_dim))
        self.register_buffer("intercept", torch.zeros(num_classes))
        # 1 once fitted; an unfitted member takes no part in the probabilities
        self.register_buffer("fitted", torch.zeros(()))

    @staticmethod
    def design(blocks: Sequence[Tensor], masks: Tensor) -> Tensor:
        """(B, sum D_m + M) float32: each block where present (NaN-free), else zeros, then the masks as 0/1."""
        parts = [torch.where(masks[:, m : m + 1], torch.nan_to_num(b.float()), 0.0) for m, b in enumerate(blocks)]
        return torch.cat([*parts, masks.float()], dim=1)

    def forward(self, blocks: Sequence[Tensor], masks: Tensor) -> Tensor:
        return ((self.design(blocks, masks) - self.mean) / self.scale) @ self.coef.T + self.intercept


class AttentionFusion(nn.Module):
    """Per-modality MLP encoders, masked softmax attention over the modality vectors, a linear classifier."""

    def __init__(
        self,
        dims: Sequence[int],
        hidden: int = 128,
        dropout: float = 0.3,
        modality_dropout: float = 0.0,
        num_classes: int = NUM_LABELS,
        linear_path: bool = False,
        linear_member: bool = False,
    ) -> None:
        super().__init__()
        if not dims or any(d < 1 for d in dims):
            raise ValueError(f"dims={list(dims)}: give one positive feature size per modality block")
        self.dims = [int(d) for d in dims]
        self.modality_dropout = modality_dropout
        self.norms = nn.ModuleList(Standardise(d) for d in self.dims)
        self.encoders = nn.ModuleList(_mlp(d, hidden, dropout) for d in self.dims)
        self.attention_mlp = _mlp(hidden * len(self.dims), hidden, dropout)
        self.fc_att = nn.Linear(hidden, len(self.dims))
        self.classifier = nn.Linear(hidden, num_classes)
        # a logistic regression on the standardised inputs (missing blocks zeroed) beside the MLPs, its logits
        # added to theirs: on a few hundred labelled clips the linear model alone is hard to beat
        self.linear = nn.Linear(sum(self.dims), num_classes) if linear_path else None
        # a logistic regression fitted on the same training rows, its probabilities averaged with the network's
        # (probabilities()); it takes no part in training the network
        self.member = LogisticMember(sum(self.dims) + len(self.dims), num_classes) if linear_member else None

    @torch.no_grad()
    def fit_normalisation(
        self, blocks: Sequence[Tensor], masks: Tensor, rows: Tensor | None = None, chunk: int = 16384
    ) -> None:
        """Set each block's mean/std from the `rows` (default all) where that modality is present.

        Sums run in float64 over chunks of rows so a 100k-row fold needs no copy of its features. A block
        with no present row keeps mean 0, std 1.
        """
        rows = torch.arange(len(masks), device=masks.device) if rows is None else rows
        for m, (block, norm) in enumerate(zip(blocks, self.norms, strict=True)):
            total = torch.zeros(block.shape[1], dtype=torch.float64, device=block.device)
            squares = torch.zeros_like(total)
            count = 0
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                x = block[part][masks[part, m]].double()  # (present rows of the chunk, D_m)
                total += x.sum(dim=0)
                squares += (x * x).sum(dim=0)
                count += len(x)
            if count == 0:
                continue
            mean = total / count
            std = (squares / count - mean * mean).clamp_min(0).sqrt()
            std = torch.where(std > _MIN_STD, std, torch.ones_like(std))
            norm.mean.copy_(mean.to(norm.mean.dtype))
            norm.std.copy_(std.to(norm.std.dtype))

    def forward(self, blocks: Sequence[Tensor], masks: Tensor) -> Tensor:
        """Logits (B, num_classes) from `blocks` (list of (B, D_m)) and `masks` (B, M), True = present.

        A missing modality's values never reach the output (they may be anything, NaN included); a row with
        every modality missing gets the classifier's bias.
        """
        if self.training and self.modality_dropout > 0:
            masks = drop_modalities(masks, self.modality_dropout)
        hidden, inputs = [], []
        for m, (x, norm, encoder) in enumerate(zip(blocks, self.norms, self.encoders, strict=True)):
            present = masks[:, m : m + 1]  # (B, 1)
            # select, not multiply: 0 * NaN is NaN, and zeroed inputs keep weight gradients finite
            x = torch.where(present, norm(x), 0.0)  # (B, D_m)
            inputs.append(x)
            hidden.append(torch.where(present, encoder(x), 0.0))  # (B, H)
        stacked = torch.stack(hidden, dim=1)  # (B, M, H)
        scores = self.fc_att(self.attention_mlp(stacked.flatten(1)))  # (B, M)
        # finite fill, not -inf: an all-missing row softmaxes to uniform, not NaN, and the mask zeroes it
        scores = scores.masked_fill(~masks, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1) * masks  # (B, M)
        fused = (weights.unsqueeze(2) * stacked).sum(dim=1)  # (B, H)
        logits = self.classifier(fused)
        if self.linear is not None:
            logits = logits + self.linear(torch.cat(inputs, dim=1))
        return logits

    def probabilities(self, blocks: Sequence[Tensor], masks: Tensor) -> Tensor:
        """(B, num_classes) softmax of the network, averaged with the logistic member's once it is fitted."""
        probs = torch.softmax(self(blocks, masks), dim=1)
        if self.member is not None and bool(self.member.fitted):
            probs = (probs + torch.softmax(self.member(blocks, masks), dim=1)) / 2
        return probs
