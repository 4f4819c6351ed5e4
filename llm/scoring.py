"""Scoring a closed label set from a language model's own likelihood, never from parsed free text.

Usage:
    plan = plan_scoring(label_words("en"), tokenizer)      # decides first-token or sequence scoring, logs which
    probs = first_token_probs(last_logits, plan)           # plan.mode == "first_token": (B, V) logits -> (B, 6)
    probs = sequence_probs(answer_logprobs(...))           # plan.mode == "sequence": (B, 6) log-likelihoods -> (B, 6)

First-token scoring reads the logits at the answer position and renormalises them over the six labels' first
tokens: one forward pass per clip. It is exact as a choice among the labels whenever the first tokens differ
(a label's first token then identifies it), even if some labels run to several tokens. When two labels share a
first token, each label is scored by the log-likelihood of its whole answer `<word><|im_end|>` (six sequences per
clip); the end token keeps a label that is a prefix of another from winning by being shorter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

ScoringMode = Literal["auto", "first_token", "sequence"]
END_TOKEN = "<|im_end|>"


@dataclass(frozen=True)
class LabelScoring:
    """How a label set is scored on one tokenizer."""

    # "first_token" or "sequence"
    mode: Literal["first_token", "sequence"]
    # label words in clips.labels.LABELS order
    words: tuple[str, ...]
    # first token id of each word
    first_ids: tuple[int, ...]
    # token ids of each full answer: word then the end token
    answer_ids: tuple[tuple[int, ...], ...]
    # words that are more than one token
    multi_token: tuple[str, ...]


def plan_scoring(words: tuple[str, ...] | list[str], tokenizer, mode: ScoringMode = "auto",
                 end_token: str = END_TOKEN) -> LabelScoring:
    """Tokenise the label words and decide how to score them.

    "auto" picks first-token scoring when every word's first token is distinct, else sequence scoring (logged as
    a warning, since it costs six sequences per clip). Returns a LabelScoring. Raises ValueError when
    "first_token" is forced on words whose first tokens collide, naming the colliding words.
    """
    words = tuple(words)
    answer_ids = tuple(tuple(tokenizer(w + end_token, add_special_tokens=False)["input_ids"]) for w in words)
    word_ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    first_ids = tuple(ids[0] for ids in word_ids)
    multi = tuple(w for w, ids in zip(words, word_ids, strict=True) if len(ids) > 1)
    collisions = sorted({w for w, f in zip(words, first_ids, strict=True) if first_ids.count(f) > 1})
    if mode == "first_token" and collisions:
        raise ValueError(f"first_token scoring: the words {collisions} share a first token; use scoring "
                         "'sequence' or 'auto', or pick label words whose first tokens differ")
    chosen = mode if mode != "auto" else ("sequence" if collisions else "first_token")
    if chosen == "sequence":
        log.warning("label scoring: SEQUENCE log-likelihood of each `<word>%s` (6 sequences per clip)%s",
                    end_token, f"; first tokens collide for {collisions}" if collisions else "")
    else:
        log.info("label scoring: first-token logits over ids %s for %s%s", first_ids, words,
                 f" (multi-token words {multi} are identified by their distinct first token)" if multi else "")
    return LabelScoring(mode=chosen, words=words, first_ids=first_ids, answer_ids=answer_ids, multi_token=multi)


def first_token_probs(logits: np.ndarray, plan: LabelScoring) -> np.ndarray:
    """(B, V) next-token logits at the answer position -> (B, 6) probabilities renormalised over the label tokens."""
    label_logits = np.asarray(logits, dtype=np.float64)[:, list(plan.first_ids)]  # (B, 6)
    return softmax(label_logits).astype(np.float32)


def sequence_probs(answer_logprob: np.ndarray) -> np.ndarray:
    """(B, 6) summed log-probabilities of each label's answer tokens -> (B, 6) probabilities over the labels."""
    return softmax(np.asarray(answer_logprob, dtype=np.float64)).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large values."""
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
