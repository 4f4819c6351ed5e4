"""Classification prompts in English or Chinese that list the six labels, and the label words the model answers.

Usage:
    prompt = build_prompt("zh", view="audio", transcript="你怎么才来")
    words = label_words("zh")          # ("中性", "生气", "高兴", "悲伤", "担心", "惊讶"), clips.labels.LABELS order

The label words are what the scorer compares (llm.scoring); the answer a fine-tuned teacher learns is
`<word><|im_end|>`. On the real Qwen2 vocabulary every word of both sets has a distinct first token (see
tests/test_llm_scoring.py), so first-token scoring applies to both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clips.labels import LABELS
from llm.scoring import LabelScoring, ScoringMode, plan_scoring

Language = Literal["en", "zh"]


@dataclass(frozen=True)
class PromptSet:
    """The words and sentences of one prompt language."""

    # label words in clips.labels.LABELS order
    words: tuple[str, ...]
    # what the model looks at, per view
    subjects: dict[str, str]
    # the question; {subject} and {labels} are filled in
    question: str
    # how a transcript is introduced
    transcript: str
    # question for a short free-text rationale (ask)
    rationale: str
    # text that prefills the assistant turn: the next token is then the answer word
    answer_prefix: str
    # what separates the prefix from the word in the answer (" happy" after "Emotion:"; no space after "情绪：")
    answer_lead: str
    # other words counted for each label when scoring (single-token spellings only; never listed in the prompt)
    aliases: tuple[tuple[str, ...], ...]


PROMPT_SETS: dict[str, PromptSet] = {
    "en": PromptSet(
        words=LABELS,
        subjects={"audio": "the speaker in this audio clip", "frames": "the person in this video clip",
                  "face": "the face in this video clip", "audio+video": "the person in this video clip",
                  "text": "the speaker of this subtitle"},
        question="Which emotion does {subject} express? Answer with exactly one word from: {labels}.",
        transcript="Subtitle: {text}\n",
        rationale="In one sentence, what cues show the emotion of {subject}?",
        answer_prefix="Emotion:",
        answer_lead=" ",
        aliases=((), (), (), (), (), ("surprised",)),
    ),
    "zh": PromptSet(
        # one token each on the Qwen2 vocabulary: 平静 (calm) for neutral, since 中性 is 中|性 and 中 starts many words
        words=("平静", "生气", "高兴", "悲伤", "担心", "惊讶"),
        subjects={"audio": "这段音频中的说话人", "frames": "这段视频中的人物", "face": "这段视频中人物的面部",
                  "audio+video": "这段视频中的人物", "text": "这句台词的说话人"},
        question="{subject}表达的是哪种情绪？只用以下词语中的一个回答：{labels}。",
        transcript="台词：{text}\n",
        rationale="用一句话说明，哪些线索体现了{subject}的情绪？",
        answer_prefix="情绪：",
        answer_lead="",
        aliases=((), ("愤怒",), ("开心",), ("难过",), ("焦虑",), ("吃惊",)),
    ),
}


def prompt_set(language: str) -> PromptSet:
    """The PromptSet of `language`; raises ValueError listing the languages."""
    if language not in PROMPT_SETS:
        raise ValueError(f"unknown prompt language {language!r}; use one of {', '.join(PROMPT_SETS)}")
    return PROMPT_SETS[language]


def label_words(language: str) -> tuple[str, ...]:
    """The six label words of `language`, in clips.labels.LABELS order."""
    return prompt_set(language).words


def build_prompt(language: str, view: str, transcript: str | None = None) -> str:
    """The classification question for `view`, with the transcript first when given."""
    prompts = prompt_set(language)
    separator = ", " if language == "en" else "、"
    question = prompts.question.format(subject=prompts.subjects[view], labels=separator.join(prompts.words))
    return (prompts.transcript.format(text=transcript) if transcript else "") + question


def build_rationale_prompt(language: str, view: str, transcript: str | None = None) -> str:
    """A short free-text question about the cues behind the emotion (for `ask`)."""
    prompts = prompt_set(language)
    question = prompts.rationale.format(subject=prompts.subjects[view])
    return (prompts.transcript.format(text=transcript) if transcript else "") + question


def scoring_plan(language: str, tokenizer, mode: ScoringMode = "auto", prefill: bool = True) -> LabelScoring:
    """How `language`'s labels are scored on `tokenizer`: after the answer prefix with every spelling summed
    (`prefill`), or on the bare first tokens right after the assistant turn opens."""
    prompts = prompt_set(language)
    if not prefill:
        return plan_scoring(prompts.words, tokenizer, mode, variants=False)
    return plan_scoring(prompts.words, tokenizer, mode, prefix=prompts.answer_prefix, lead=prompts.answer_lead,
                        aliases=prompts.aliases)
