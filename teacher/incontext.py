"""An llm agent with cross-fitted in-context examples: the k labelled lines most similar to the clip's transcript
(cosine similarity of a cached text embedding, e5 by default) are shown with their labels above the question.

Usage (a teacher-label config; the run's features must include the extractor named by incontext_features):
    agents:
      - name: qwen-text-knn
        kind: llm
        options: {model: ..., family: qwen2_5_text, view: text, language: zh, incontext_k: 4}
In code:
    agent = build_agent(spec, AgentContext(features=feature_set, labels=labels, clips=refs, folds=assignment))
    probs = agent.score(names); fold_probs = agent.score_folds(names)      # (n, 6), (n, K, 6)

Out of fold, like a feature agent: a labelled clip of fold f is shown only lines of the other folds, so its score
never saw its own fold's labels; a pool clip is scored once per fold k with lines from the folds other than k
(`score_folds`, what student fold k trains on), and its probabilities are the mean over those K scorings. The pool
thus costs K forward passes per clip (with prompts about 25 tokens longer per example): on a GPU, not 2 cores.
k is small by principle: the examples are evidence about the line, and a long list of them turns into a label
prior the model copies (Zhao et al. 2021 find majority-label and recency bias grow with the examples shown).
"""

from __future__ import annotations

import numpy as np

from clips.labels import NUM_LABELS, label_index
from llm.incontext import incontext_request
from teacher.llm_agent import LLMAgent
from teacher.llm_options import LLMAgentOptions
from teacher.spec import AgentContext, AgentSpec, combine_folds


def eligible_examples(query_fold: np.ndarray, example_fold: np.ndarray, exclude: int | None = None) -> np.ndarray:
    """(n, m) bool: which of m labelled example lines each of n clips may be shown.

    A labelled clip (query_fold >= 0) sees only lines of other folds; a pool clip (-1) sees the lines outside
    fold `exclude` (every line when None).
    """
    query_fold, example_fold = np.asarray(query_fold)[:, None], np.asarray(example_fold)[None, :]
    blocked = np.where(query_fold >= 0, query_fold, -1 if exclude is None else exclude)   # (n, 1)
    return example_fold != blocked


def nearest(query: np.ndarray, examples: np.ndarray, eligible: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of the k most cosine-similar eligible examples per query row, least similar first (the
    nearest ends the list, next to the question); -1 pads rows with fewer than k eligible examples."""
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    similarity = np.where(eligible, unit(query) @ unit(examples).T, -np.inf)                # (n, m)
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k][:, ::-1]                   # (n, k) nearest last
    return np.where(np.take_along_axis(similarity, top, axis=1) > -np.inf, top, -1)


class InContextLLMAgent(LLMAgent):
    """LLMAgent whose prompts carry the k nearest labelled lines of the other folds (see the module docstring)."""

    def __init__(self, name: str, options: LLMAgentOptions, context: AgentContext):
        # the cached vectors are checked before the model loads: a misnamed extractor costs no model load
        features = context.features
        keys = [i for i, key in enumerate(features.extractors) if key.split("-")[0] == options.incontext_features]
        if len(keys) != 1:
            raise ValueError(f"agent {name!r}: incontext_features={options.incontext_features!r} matches "
                             f"{len(keys)} cached extractors of {features.extractors}; add it to features.extractors")
        super().__init__(name, options, context.clips)
        self.folds = context.folds
        self._row = {n: i for i, n in enumerate(features.names)}
        self._vectors, self._present = features.blocks[keys[0]], features.masks[:, keys[0]]
        bank = [n for n in sorted(context.labels) if n in self._row and self._present[self._row[n]]
                and self.clips.get(n) is not None and self.clips[n].transcript]
        self._bank_lines = [self.clips[n].transcript for n in bank]
        self._bank_labels = np.array([label_index(context.labels[n]) for n in bank], dtype=np.int64)
        self._bank_vectors = self._vectors[[self._row[n] for n in bank]]
        self._bank_fold = self.folds.of(bank)
        self._memo: tuple[tuple[str, ...], np.ndarray, np.ndarray] | None = None

    def examples(self, names: list[str], exclude: int | None = None) -> list[list[tuple[str, int]]]:
        """The (line, label index) examples shown for each clip of `names` (pool clips: outside fold `exclude`)."""
        rows = np.array([self._row.get(n, -1) for n in names])
        query = np.where((rows >= 0)[:, None], self._vectors[np.maximum(rows, 0)], 0.0)
        chosen = nearest(query, self._bank_vectors, eligible_examples(self.folds.of(names), self._bank_fold,
                                                                      exclude), self.options.incontext_k)
        known = (rows >= 0) & self._present[np.maximum(rows, 0)]
        return [[(self._bank_lines[j], int(self._bank_labels[j])) for j in picks if j >= 0] if ok else []
                for picks, ok in zip(chosen, known, strict=True)]

    def _score_examples(self, names: list[str], exclude: int | None) -> tuple[np.ndarray, np.ndarray]:
        """((n, 6) probabilities, (n,) mass) with each clip's examples; NaN for clips without the view's media."""
        out = np.full((len(names), NUM_LABELS), np.nan, dtype=np.float32)
        mass = np.full(len(names), np.nan, dtype=np.float32)
        rows, requests = [], []
        for i, (name, shown) in enumerate(zip(names, self.examples(names, exclude), strict=True)):
            ref = self.clips.get(name)
            media = self.requests.media(ref) if ref is not None else None
            request = None if media is None else incontext_request(
                self.requests.family, self.requests.processor, media, self.options.request_settings(), shown)
            if request is not None:
                rows.append(i)
                requests.append(request)
        if requests:
            out[rows], mass[rows] = self.scorer.scores(requests)
        return out, mass

    def _fold_scores(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """((n, K, 6) probabilities, (n, K) mass): a labelled clip in its own fold's column (examples of the other
        folds; NaN elsewhere), a pool clip in every column k (examples outside fold k)."""
        if self._memo is not None and self._memo[0] == tuple(names):
            return self._memo[1], self._memo[2]
        fold_of = self.folds.of(names)
        probs = np.full((len(names), self.folds.folds, NUM_LABELS), np.nan, dtype=np.float32)
        mass = np.full((len(names), self.folds.folds), np.nan, dtype=np.float32)
        labelled = np.flatnonzero(fold_of >= 0)
        if len(labelled):
            p, m = self._score_examples([names[i] for i in labelled], None)
            probs[labelled, fold_of[labelled]], mass[labelled, fold_of[labelled]] = p, m
        pool = np.flatnonzero(fold_of < 0)
        for k in range(self.folds.folds if len(pool) else 0):
            probs[pool, k], mass[pool, k] = self._score_examples([names[i] for i in pool], k)
        self._memo = (tuple(names), probs, mass)
        return probs, mass

    def score_folds(self, names: list[str]) -> np.ndarray:
        """(n, K, 6): what student fold k may train on (see _fold_scores)."""
        return self._fold_scores(list(names))[0]

    def score_with_mass(self, names) -> tuple[np.ndarray, np.ndarray]:
        """((n, 6) probabilities, (n,) mass): a labelled clip's out-of-fold scores, a pool clip's mean over folds."""
        probs, mass = self._fold_scores(list(names))
        fold_of = self.folds.of(list(names))
        return combine_folds(probs, fold_of), combine_folds(mass[..., None], fold_of)[:, 0]


def build_incontext_agent(spec: AgentSpec, context: AgentContext) -> InContextLLMAgent:
    """teacher.agents builder for an llm spec with options.incontext_k > 0: needs clips, features and folds."""
    options = LLMAgentOptions.from_options(spec.options, spec.name)
    missing = [what for what, value in (("clips", context.clips), ("features", context.features),
                                        ("folds", context.folds)) if not value]
    if missing:
        raise ValueError(f"agent {spec.name!r}: in-context examples need the context's {', '.join(missing)} "
                         "(teacher-label passes them all)")
    return InContextLLMAgent(spec.name, options, context)
