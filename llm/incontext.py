"""Prompts with in-context examples: labelled lines and their labels shown above the question.

Usage:
    examples = [("你到底有完没完！", 1), ("太好了我们成功了！", 2)]   # (line, label index), least similar first
    request = incontext_request(family, tokenizer, media, RequestSettings(view="text", language="zh"), examples)

Each example is written the way the answer is scored: the prompt set's transcript line, then the answer prefix and
the label word (`台词：…\n情绪：生气`), so the examples teach the answer format and the label words in use. The most
similar example comes last, next to the question (Liu et al. 2022, "What makes good in-context examples for
GPT-3?", order by similarity with the nearest closest to the query). Which lines may be shown is the caller's
business (teacher.incontext picks them out of fold).
"""

from __future__ import annotations

from collections.abc import Sequence

from llm.families import Family
from llm.prompts import prompt_set
from llm.requests import ClipMedia, Request, RequestSettings, build_request

# the line that introduces the examples, per prompt language
INTRODUCTIONS: dict[str, str] = {"zh": "以下是几句已标注情绪的台词：\n", "en": "Some subtitles and their emotions:\n"}


def examples_block(language: str, examples: Sequence[tuple[str, int]]) -> str:
    """The text of `examples` ((line, label index) pairs, in the order shown), ending with a blank line."""
    prompts = prompt_set(language)
    lines = [prompts.transcript.format(text=line) + prompts.answer_prefix + prompts.answer_lead + prompts.words[label]
             for line, label in examples]
    return INTRODUCTIONS[language] + "\n".join(lines) + "\n\n"


def incontext_request(family: Family, processor, media: ClipMedia, settings: RequestSettings,
                      examples: Sequence[tuple[str, int]]) -> Request | None:
    """The classification Request of `media` with `examples` above the question (build_request's without them);
    None when the clip lacks the view's media."""
    return build_request(family, processor, media, settings,
                         preamble=examples_block(settings.language, examples) if examples else "")
