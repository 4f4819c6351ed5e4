"""Scoring a closed label set from a language model's own likelihood, never from parsed free text.

Usage:
    plan = plan_scoring(label_words("en"), tokenizer, prefix="Emotion:", lead=" ")   # logs first-token or sequence
    probs, mass = first_token_scores(last_logits, plan)   # plan.mode == "first_token": (B, V) logits -> (B, 6), (B,)
    probs, mass = sequence_scores(answer_logprobs)        # plan.mode == "sequence": (B, 6) log-likelihoods

The assistant turn is prefilled with `plan.prefix` ("Emotion:" / "情绪："), so the next token is the answer word and
each label is one token (" happy", " worried", "高兴"), not a generic prefix such as `wor|ried` or `中|性`.
First-token scoring reads the log-probabilities (over the whole vocabulary) at that position and, per label, sums
the probability of every single-token spelling of it (" happy", " Happy", "happy", "Happy", and the aliases a prompt
set lists): the score no longer depends on how the model would have cased or spaced its answer. The label mass, the
probability that fell on any label token, is returned beside the renormalised probabilities as a confidence signal
(a model that wanted to say something else gets a low mass). When two labels' answers share a first token, each
label is scored by the log-likelihood of its whole answer `<answer><|im_end|>` (six sequences per clip), and the
mass is the probability of answering exactly one of the six.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import logsumexp as _logsumexp
from scipy.special import softmax as _softmax

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
    # text that prefills the assistant turn before the answer ("" for none)
    prefix: str
    # the answer a teacher gives (and learns) after the prefix, per label: lead + word
    answers: tuple[str, ...]
    # first token id of each answer
    first_ids: tuple[int, ...]
    # token ids of each full answer: the answer then the end token
    answer_ids: tuple[tuple[int, ...], ...]
    # single-token spellings summed per label (the answer's own first token first)
    variant_ids: tuple[tuple[int, ...], ...]
    # answers that are more than one token
    multi_token: tuple[str, ...]

    @property
    def token_ids(self) -> tuple[int, ...]:
        """Every variant id, label by label: the columns `label_token_scores` reads."""
        return tuple(t for ids in self.variant_ids for t in ids)

    @property
    def token_labels(self) -> np.ndarray:
        """(len(token_ids),) label index of each variant id."""
        return np.array([k for k, ids in enumerate(self.variant_ids) for _ in ids], dtype=np.int64)


def spellings(word: str, aliases: tuple[str, ...] = ()) -> list[str]:
    """Case and leading-space variants of `word` and its aliases, each once, `word` first."""
    out: list[str] = []
    for form in (word, *aliases):
        for cased in (form, form.lower(), form.capitalize(), form.upper()):
            for text in (cased, " " + cased):
                if text not in out:
                    out.append(text)
    return out


def plan_scoring(words: tuple[str, ...] | list[str], tokenizer, mode: ScoringMode = "auto", end_token: str = END_TOKEN,
                 prefix: str = "", lead: str = "", aliases: tuple[tuple[str, ...], ...] | None = None,
                 variants: bool = True) -> LabelScoring:
    """Tokenise the answers (`lead` + word) and decide how to score them.

    "auto" picks first-token scoring when every answer's first token is distinct, else sequence scoring (logged as
    a warning, since it costs six sequences per clip). With `variants`, every single-token spelling of a word or of
    its `aliases` (case, leading space) counts for that label, unless it is also a spelling of another label
    (dropped, logged). Returns a LabelScoring. Raises ValueError when "first_token" is forced on answers whose
    first tokens collide, naming the colliding words, and when variants leave a label without any spelling.
    """
    words = tuple(words)
    answers = tuple(lead + w for w in words)

    def ids_of(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    answer_ids = tuple(tuple(ids_of(a + end_token)) for a in answers)
    first_ids = tuple(ids_of(a)[0] for a in answers)
    multi = tuple(w for w, a in zip(words, answers, strict=True) if len(ids_of(a)) > 1)
    collisions = sorted({w for w, f in zip(words, first_ids, strict=True) if first_ids.count(f) > 1})
    if mode == "first_token" and collisions:
        raise ValueError(f"first_token scoring: the words {collisions} share a first token; use scoring "
                         "'sequence' or 'auto', or pick label words whose first tokens differ")
    chosen = mode if mode != "auto" else ("sequence" if collisions else "first_token")
    variant_ids = tuple((f,) for f in first_ids)
    if variants and chosen == "first_token":
        variant_ids = _variant_ids(words, first_ids, aliases or tuple(() for _ in words), ids_of)
        empty = [w for w, ids in zip(words, variant_ids, strict=True) if not ids]
        if empty:
            raise ValueError(f"no single-token spelling left for {empty}: their spellings are shared with other "
                             "labels; pick label words or aliases that differ")
    plan = LabelScoring(mode=chosen, words=words, prefix=prefix, answers=answers, first_ids=first_ids,
                        answer_ids=answer_ids, variant_ids=variant_ids, multi_token=multi)
    if chosen == "sequence":
        log.warning("label scoring: SEQUENCE log-likelihood of each `%s<answer>%s` (6 sequences per clip)%s",
                    prefix, end_token, f"; first tokens collide for {collisions}" if collisions else "")
    else:
        log.info("label scoring: first-token log-probabilities after %r, %d spellings over %s%s", prefix,
                 len(plan.token_ids), answers,
                 f" (multi-token answers {multi} are identified by their distinct first token)" if multi else "")
    return plan


def _variant_ids(words, first_ids, aliases, ids_of) -> tuple[tuple[int, ...], ...]:
    """Per label, the first ids plus every single-token spelling that no other label shares."""
    candidates = []
    for word, first, extra in zip(words, first_ids, aliases, strict=True):
        ids = [first] + [t[0] for text in spellings(word, tuple(extra)) if len(t := ids_of(text)) == 1]
        candidates.append(list(dict.fromkeys(ids)))
    owners: dict[int, set[int]] = {}
    for label, ids in enumerate(candidates):
        for token in ids:
            owners.setdefault(token, set()).add(label)
    shared = sorted(t for t, labels in owners.items() if len(labels) > 1)
    if shared:
        log.warning("label scoring: token ids %s spell more than one label; they count for none", shared)
    return tuple(tuple(t for t in ids if len(owners[t]) == 1) for ids in candidates)


def label_token_scores(token_logprobs: np.ndarray, plan: LabelScoring) -> tuple[np.ndarray, np.ndarray]:
    """(B, T) log-probabilities of `plan.token_ids` (normalised over the whole vocabulary) ->
    ((B, 6) probabilities over the labels, (B,) label mass: the probability on all label tokens together)."""
    logp = np.asarray(token_logprobs, dtype=np.float64)
    columns = plan.token_labels
    per_label = np.stack([logsumexp(logp[:, columns == k]) for k in range(len(plan.words))], axis=1)  # (B, 6)
    return softmax(per_label).astype(np.float32), np.exp(logsumexp(per_label)).astype(np.float32)


def first_token_scores(logits: np.ndarray, plan: LabelScoring) -> tuple[np.ndarray, np.ndarray]:
    """(B, V) next-token logits at the answer position -> ((B, 6) label probabilities, (B,) label mass)."""
    logits = np.asarray(logits, dtype=np.float64)
    logp = logits - logsumexp(logits)[:, None]  # (B, V) log-softmax
    return label_token_scores(logp[:, list(plan.token_ids)], plan)


def first_token_probs(logits: np.ndarray, plan: LabelScoring) -> np.ndarray:
    """(B, V) next-token logits at the answer position -> (B, 6) probabilities renormalised over the labels."""
    return first_token_scores(logits, plan)[0]


def sequence_scores(answer_logprob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 6) summed log-probabilities of each label's answer tokens -> ((B, 6) probabilities over the labels,
    (B,) label mass: the probability of answering exactly one of the labels)."""
    logp = np.asarray(answer_logprob, dtype=np.float64)
    return softmax(logp).astype(np.float32), np.exp(logsumexp(logp)).astype(np.float32)


def sequence_probs(answer_logprob: np.ndarray) -> np.ndarray:
    """(B, 6) summed log-probabilities of each label's answer tokens -> (B, 6) probabilities over the labels."""
    return sequence_scores(answer_logprob)[0]


def logsumexp(x: np.ndarray) -> np.ndarray:
    """log(sum(exp(x))) over the last axis (scipy's, stable); -inf for an all -inf axis."""
    return _logsumexp(np.asarray(x, dtype=np.float64), axis=-1)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (scipy's, stable for large values)."""
    return _softmax(np.asarray(x, dtype=np.float64), axis=-1)
