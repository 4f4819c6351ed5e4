"""LLM teacher agents: a Qwen audio/vision/omni/text model scoring the six labels by its own likelihood.

Usage (a teacher-label config):
    agents:
      - name: qwen-audio
        kind: llm
        options: {model: runs/a/teacher/merged, family: qwen2_audio, view: audio, backend: vllm}
      - name: qwen-face
        kind: llm
        options: {model: Qwen/Qwen2.5-VL-7B-Instruct, adapter: runs/b/teacher/adapter, family: qwen2_5_vl,
                  view: face, language: zh}
In code:
    agent = build_agent(spec, AgentContext(features=None, labels={}, clips={r.name: r for r in corpus.all()}))
    probs = agent.score(names)        # (n, 6); NaN rows for clips without the view's media
    answers = ask_clip(Path("clip.mp4"), [spec])      # prints probabilities and a short rationale per agent

Clips are decoded on demand (clips.media.decode_clip), one scoring batch at a time, so memory stays bounded.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clips.dataset import ClipRef
from clips.labels import LABELS, NUM_LABELS
from llm.calibration import content_free_requests, prior_correct
from llm.decoded import DecodedCache, DecodedMedia
from llm.families import Family
from llm.prompts import build_rationale_prompt
from llm.requests import ClipMedia, Request, build_request
from llm.scoring import LabelScoring
from llm.views import view_media
from teacher.llm_options import LLMAgentOptions
from teacher.spec import AgentSpec

log = logging.getLogger(__name__)

def _hf_scorer(options: LLMAgentOptions, family: Family, plan_for: Callable, adapters: Sequence[str]):
    from llm.hf_backend import HFScorer, load_model, tokenizer_of

    model, processor = load_model(options.model, family, device=options.device, quantization=options.quantization,
                                  adapters=adapters, dtype=options.torch_dtype())
    plan = plan_for(tokenizer_of(processor))
    return HFScorer(model, processor, family, plan, options.batch_size), processor


def _vllm_scorer(options: LLMAgentOptions, family: Family, plan_for: Callable, adapters: Sequence[str]):
    from llm.hf_backend import load_processor, tokenizer_of
    from llm.vllm_backend import VLLMScorer

    processor = load_processor(options.model)
    plan = plan_for(tokenizer_of(processor))
    return VLLMScorer(options.model, family, plan, adapters=list(adapters), engine=options.engine), processor


# backend name -> (options, family, plan builder, adapter folders) -> (scorer with .scores/.generate/.plan and
# .adapters, processor); scores(requests, adapter_ids) takes one adapter index (None: the base model) per request
SCORER_BUILDERS: dict[str, Callable] = {"hf": _hf_scorer, "vllm": _vllm_scorer}


class ClipRequests:
    """Builds an llm agent's model requests from ClipRefs: decode (cached, in worker processes), cut the view,
    apply the chat template."""

    def __init__(self, options: LLMAgentOptions, processor):
        self.options = options
        self.family = options.family_record()
        self.processor = processor
        folder = Path(options.media_cache) if options.media_cache else None
        self.cache = DecodedCache(folder, options.decode_settings(), options.decode_workers)

    def media(self, ref: ClipRef, decoded: DecodedMedia | None = None) -> ClipMedia | None:
        """The clip's media for the view (decoded here unless given); None when the file is missing or unreadable."""
        if self.options.view == "text":
            return ClipMedia(name=ref.name, audio=None, frames=None, transcript=ref.transcript)
        if ref.path is None:
            return None
        decoded = decoded if decoded is not None else self.cache.media(ref)
        return view_media(ref.name, decoded, self.options.view, ref.transcript)

    def request(self, ref: ClipRef, question: str | None = None, decoded: DecodedMedia | None = None
                ) -> Request | None:
        """The model request of one clip, or None without the view's media."""
        media = self.media(ref, decoded)
        if media is None:
            return None
        return build_request(self.family, self.processor, media, self.options.request_settings(), question)

    def requests(self, refs: Sequence[ClipRef]) -> Iterator[Request | None]:
        """The requests of `refs` in order, their clips decoded ahead by the worker processes."""
        if self.options.view == "text":
            yield from (self.request(ref) for ref in refs)
            return
        for ref, decoded in zip(refs, self.cache.iter_media(refs), strict=True):
            yield self.request(ref, decoded=decoded) if decoded is not None else None


class LLMAgent:
    """An Agent (teacher.agents) backed by a Qwen model; needs the clips' ClipRefs in the context.

    `adapters` (instead of options.adapter) serves several LoRA adapters on one loaded model or engine, e.g. an
    agent's K fold adapters: score_adapters() scores each clip under the adapters asked for it.
    """

    def __init__(self, name: str, options: LLMAgentOptions, clips: dict[str, ClipRef] | None,
                 adapters: Sequence[str] | None = None):
        if adapters is not None and options.adapter is not None:
            raise ValueError(f"agent {name!r}: give options.adapter ({options.adapter}) or fold adapters, not both")
        self.name = name
        self.options = options
        self.clips = clips or {}
        self.adapters = list(adapters) if adapters is not None else [options.adapter] if options.adapter else []
        self.scorer, processor = SCORER_BUILDERS[options.backend](options, options.family_record(),
                                                                  options.scoring_plan, self.adapters)
        self.requests = ClipRequests(options, processor)
        # requests per scorer call: the transformers backend runs them batch_size at a time while the workers
        # decode ahead; a vLLM engine schedules its own batches and fills them best from many requests at once
        self.chunk = 4 * options.batch_size if options.backend == "hf" else max(256, 4 * options.batch_size)
        # content-free label prior per adapter slot (llm.calibration), computed once when asked for
        self._prior: dict[int | None, np.ndarray] = {}

    @property
    def plan(self) -> LabelScoring:
        return self.scorer.plan

    def settings(self) -> dict[str, Any]:
        # how clips are decoded in parallel, and where decoded media are kept, does not change the scores
        options = {k: v for k, v in dataclasses.asdict(self.options).items() if k not in ("decode_workers",
                                                                                          "media_cache")}
        return {"kind": "llm", **options, "scoring_mode": self.plan.mode,
                "label_words": list(self.plan.words), "answer_prefix": self.plan.prefix,
                "label_token_ids": [list(ids) for ids in self.plan.variant_ids]}

    def score(self, names: Sequence[str]) -> np.ndarray:
        """(n, 6) label probabilities; NaN rows for clips without the view's media."""
        return self.score_with_mass(names)[0]

    def score_with_mass(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """((n, 6) label probabilities, (n,) label mass: the probability the model put on any label token);
        NaN rows and NaN mass for clips without the view's media. Scored with the agent's only adapter, if any."""
        if len(self.adapters) > 1:
            raise ValueError(f"agent {self.name!r} serves {len(self.adapters)} adapters; use score_adapters")
        probs, mass = self.score_adapters(names, [[0 if self.adapters else None]] * len(names))
        return probs[:, 0], mass[:, 0]

    def score_adapters(self, names: Sequence[str], wanted: Sequence[Sequence[int | None]]
                       ) -> tuple[np.ndarray, np.ndarray]:
        """((n, S, 6) probabilities, (n, S) label mass) of each clip under the adapters wanted[i] names (indices
        into `adapters`; None: the base model, in slot 0), S = max(1, number of adapters).

        Each clip is decoded and templated once and sent once per wanted adapter; all slots not wanted, and every
        slot of a clip without the view's media, are NaN.
        """
        slots = max(1, len(self.adapters))
        out = np.full((len(names), slots, NUM_LABELS), np.nan, dtype=np.float32)
        mass = np.full((len(names), slots), np.nan, dtype=np.float32)
        known = [(i, self.clips[name]) for i, name in enumerate(names) if name in self.clips and wanted[i]]
        entries: list[tuple[int, int | None]] = []  # (clip row, adapter) per request sent
        requests: list[Request] = []

        def flush() -> None:
            rows = [i for i, _ in entries]
            cols = [0 if a is None else a for _, a in entries]
            out[rows, cols], mass[rows, cols] = self.scorer.scores(requests, adapter_ids=[a for _, a in entries])
            entries.clear()
            requests.clear()

        for (i, _), request in zip(known, self.requests.requests([ref for _, ref in known]), strict=True):
            if request is not None:
                for adapter in wanted[i]:
                    entries.append((i, adapter))
                    requests.append(request)
            if len(requests) >= self.chunk:  # scored while the workers decode the next clips
                flush()
        if requests:
            flush()
        if self.options.calibration == "content_free":
            priors = np.stack([self.content_free_prior(a if self.adapters else None) for a in range(slots)])
            out = prior_correct(out, priors[None])                                   # (n, S, 6) / (1, S, 6)
        missing = len(names) - len({i for i, _ in known if not np.isnan(out[i, :, 0]).all()})
        if missing:
            log.info("agent %s: %d of %d clips lack %s media or were not asked: NaN rows", self.name, missing,
                     len(names), self.options.view)
        return out, mass

    def content_free_prior(self, adapter: int | None = None) -> np.ndarray:
        """(6,) mean label probabilities of content-free lines under this agent's prompt (llm.calibration) and
        `adapter` (an index into `adapters`; None: the base model), computed once per adapter."""
        if adapter not in self._prior:
            requests = content_free_requests(self.requests.family, self.requests.processor,
                                             self.options.request_settings())
            self._prior[adapter] = self.scorer.scores(requests, adapter_ids=[adapter] * len(requests))[0].mean(axis=0)
        return self._prior[adapter]

    def close(self) -> None:
        """Release the model (and shut a vLLM engine down) so the next agent can load; the agent is unusable after."""
        scorer, self.scorer = self.scorer, None
        if scorer is not None:
            scorer.close()


def build_llm_agent(spec, context) -> LLMAgent:
    """teacher.agents builder for kind "llm": options from spec.options, clips from context.clips."""
    options = LLMAgentOptions.from_options(spec.options, spec.name)
    clips = getattr(context, "clips", None)
    if not clips:
        raise ValueError(f"agent {spec.name!r}: an llm agent needs the clips (AgentContext.clips) to read media; "
                         "teacher-label passes them, in code give AgentContext(..., clips={ref.name: ref})")
    return LLMAgent(spec.name, options, clips)


@dataclass
class AskConfig:
    """Settings of `ask`: one media file, the llm agents to ask, and an optional question."""

    # video or audio file to ask about
    clip: Path
    # llm agent specs (kind llm, options as for teacher-label)
    agents: list[Any] = field(default_factory=list)
    # free-text question; None asks for the cues behind the emotion
    question: str | None = None
    # transcript of the clip, shown to agents that use one
    transcript: str | None = None
    # greedy tokens generated for the answer
    max_new_tokens: int = 48

    def __post_init__(self) -> None:
        self.agents = [a if isinstance(a, AgentSpec) else AgentSpec(**a) for a in self.agents]
        if not self.agents:
            raise ValueError("agents: the list is empty; give at least one llm agent spec (kind: llm)")
        wrong = [a.name for a in self.agents if a.kind != "llm"]
        if wrong:
            raise ValueError(f"agents {wrong}: ask needs llm agents (kind: llm)")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: use a positive number")


@dataclass
class AskAnswer:
    """One agent's answer about one clip."""

    agent: str
    # label -> probability; empty when the clip lacks the agent's media
    probs: dict[str, float]
    # the generated rationale or answer to the question
    text: str


def ask_clip(path: Path, agents: Sequence[Any], question: str | None = None, transcript: str | None = None,
             max_new_tokens: int = 48, echo: Callable[[str], None] = print) -> list[AskAnswer]:
    """Decode one file, and for each llm agent spec echo its label probabilities and a greedy free-text answer.

    Without `question` the answer is a one-sentence rationale. Returns the answers; raises ValueError for a
    missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"clip {path}: no such file; give a video or audio file")
    ref = ClipRef(name=path.stem, path=path, label=None, transcript=transcript)
    answers = []
    for spec in agents:
        # one clip: decoded once, here (no worker processes), for the scores and the free-text answer alike
        options = dataclasses.replace(LLMAgentOptions.from_options(spec.options, spec.name), decode_workers=0)
        agent = LLMAgent(spec.name, options, {ref.name: ref})
        try:
            decoded = agent.requests.cache.media(ref) if options.view != "text" else None
            request = agent.requests.request(ref, decoded=decoded)
            if request is None:
                answers.append(AskAnswer(spec.name, {}, f"no {options.view} media in {path.name}"))
                echo(f"{spec.name}: {answers[-1].text}")
                continue
            probs = agent.scorer.scores([request])[0][0]
            prompt = question or build_rationale_prompt(options.language, options.view)
            # the adapter taught a one-word answer: free text comes from the base model
            text = agent.scorer.generate(agent.requests.request(ref, question=prompt, decoded=decoded),
                                         max_new_tokens, adapter=False)
        finally:
            agent.close()
        answers.append(AskAnswer(spec.name, dict(zip(LABELS, map(float, probs), strict=True)), text))
        ranked = sorted(answers[-1].probs.items(), key=lambda kv: -kv[1])
        echo(f"{spec.name}: " + "  ".join(f"{label} {p:.3f}" for label, p in ranked))
        echo(f"{spec.name} says: {text}")
    return answers
