import logging

import numpy as np
import pytest

from clips.labels import LABELS
from llm.families import FAMILY_BUILDERS, get_family
from llm.prompts import build_prompt, label_words, scoring_plan
from llm.scoring import (
    END_TOKEN,
    first_token_probs,
    first_token_scores,
    plan_scoring,
    sequence_probs,
    sequence_scores,
    spellings,
)


def test_bare_english_first_tokens_are_generic_prefixes(qwen2_tok, caplog):
    caplog.set_level(logging.INFO, logger="llm.scoring")
    plan = scoring_plan("en", qwen2_tok, prefill=False)
    assert plan.words == LABELS and plan.prefix == "" and plan.answers == LABELS
    assert plan.mode == "first_token"
    # neutral, ang|ry, happy, sad, wor|ried, surpr|ise: distinct first tokens, three of them generic prefixes
    assert plan.first_ids == (59568, 524, 56521, 82114, 49710, 19784)
    assert plan.variant_ids == tuple((i,) for i in plan.first_ids)
    assert plan.multi_token == ("angry", "worried", "surprise")
    assert plan.answer_ids[1] == (524, 884, 151645)
    assert "first-token log-probabilities" in caplog.text


def test_prefilled_english_labels_are_one_token_each_with_their_spellings(qwen2_tok):
    plan = scoring_plan("en", qwen2_tok)
    assert plan.prefix == "Emotion:" and plan.answers == tuple(" " + w for w in LABELS)
    assert plan.mode == "first_token" and plan.multi_token == ()
    assert plan.first_ids == (20628, 18514, 6247, 12421, 17811, 12761)  # " neutral", " angry", ...
    assert plan.answer_ids[4] == (17811, 151645)
    # single-token spellings only: " Worried", "worried", "WORRIED" are several tokens and do not count
    assert plan.variant_ids == ((20628, 59568, 86907, 58694), (18514, 77818), (6247, 56521, 32847, 23355),
                                (12421, 82114, 59665, 30681), (17811,), (12761, 84484, 14453))
    assert qwen2_tok.decode([14453]) == " surprised"  # the alias
    assert plan.token_labels.tolist() == [0] * 4 + [1] * 2 + [2] * 4 + [3] * 4 + [4] + [5] * 3


def test_prefilled_chinese_labels_are_one_token_each(qwen2_tok):
    plan = scoring_plan("zh", qwen2_tok)
    assert plan.words == ("平静", "生气", "高兴", "悲伤", "担心", "惊讶") and plan.prefix == "情绪："
    assert plan.first_ids == (106837, 106353, 102483, 110597, 102142, 107664) and plan.multi_token == ()
    # aliases 愤怒, 开心, 难过, 焦虑, 吃惊 count for their labels; " 高兴" (with a space) is several tokens
    assert plan.variant_ids == ((106837,), (106353, 108299), (102483, 102313), (110597, 110702),
                                (102142, 107115), (107664, 115760))
    # the bare scheme's 中性 is 中|性: 中 starts many words
    assert qwen2_tok("中性", add_special_tokens=False)["input_ids"] == [15946, 33071]


@pytest.mark.parametrize("language", ["en", "zh"])
def test_prompt_prefix_and_answer_tokenise_at_their_boundary(qwen2_tok, language):
    """Teacher-train's loss and sequence scoring need prompt + prefix + answer to end with the answer's ids."""
    plan = scoring_plan(language, qwen2_tok)
    prompt = "<|im_start|>user\n" + build_prompt(language, "text", "你怎么才来") + "<|im_end|>\n<|im_start|>assistant\n"
    prefix_ids = qwen2_tok(prompt + plan.prefix, add_special_tokens=False)["input_ids"]
    for answer, ids in zip(plan.answers, plan.answer_ids, strict=True):
        full = qwen2_tok(prompt + plan.prefix + answer + END_TOKEN, add_special_tokens=False)["input_ids"]
        assert full == prefix_ids + list(ids)


def test_spellings_cover_case_and_space_once_each():
    assert spellings("happy") == ["happy", " happy", "Happy", " Happy", "HAPPY", " HAPPY"]
    assert spellings("高兴", ("开心",)) == ["高兴", " 高兴", "开心", " 开心"]


def test_variants_shared_by_two_labels_count_for_neither(qwen2_tok, caplog):
    caplog.set_level(logging.WARNING, logger="llm.scoring")
    words = ("calm", "angry", "happy", "sad", "worried", "surprise")
    plan = plan_scoring(words, qwen2_tok, prefix="Emotion:", lead=" ",
                        aliases=(("joy",), (), ("joy",), (), (), ()))  # "joy" counts for calm and for happy
    assert plan.variant_ids[0] == (19300,) and plan.variant_ids[2] == (6247, 56521, 32847, 23355)
    assert not {4123, 15888, 79771, 27138} & set(plan.token_ids)  # joy, " joy", Joy, " Joy"
    assert "spell more than one label" in caplog.text
    with pytest.raises(ValueError, match=r"no single-token spelling left for \['happy'\]"):
        plan_scoring(words, qwen2_tok, prefix="Emotion:", lead=" ", aliases=(("happy",), (), (), (), (), ()))


def test_colliding_first_tokens_fall_back_to_sequence_scoring_loudly(qwen2_tok, caplog):
    words = ("中性", "中立", "高兴", "悲伤", "担心", "惊讶")  # both start with 中 (15946)
    caplog.set_level(logging.WARNING, logger="llm.scoring")
    plan = plan_scoring(words, qwen2_tok)
    assert plan.mode == "sequence"
    assert plan.first_ids[0] == plan.first_ids[1] == 15946
    assert "SEQUENCE" in caplog.text and "中立" in caplog.text
    with pytest.raises(ValueError, match=r"share a first token"):
        plan_scoring(words, qwen2_tok, mode="first_token")
    assert scoring_plan("en", qwen2_tok, mode="sequence").mode == "sequence"


def test_label_probabilities_and_mass_by_hand(qwen2_tok):
    plan = scoring_plan("en", qwen2_tok)
    vocab = len(qwen2_tok)
    logits = np.zeros((2, vocab), np.float32)
    logits[0, list(plan.variant_ids[2])] = np.log(3.0)  # every happy spelling three times as likely as a token
    logits[1, 7] = 50.0                                  # nearly all mass on a non-label token
    probs, mass = first_token_scores(logits, plan)
    # per label: (spellings x weight) = neutral 4, angry 2, happy 4 x 3, sad 4, worried 1, surprise 3
    np.testing.assert_allclose(probs[0], np.array([4, 2, 12, 4, 1, 3]) / 26, rtol=1e-6)
    np.testing.assert_allclose(mass[0], 26 / (vocab - 4 + 12), rtol=1e-5)
    np.testing.assert_allclose(probs[1], np.array([4, 2, 4, 4, 1, 3]) / 18, rtol=1e-6)
    np.testing.assert_allclose(mass[1], 18 / (vocab - 1 + np.exp(50.0)), rtol=1e-4)
    np.testing.assert_array_equal(first_token_probs(logits, plan), probs)
    # the bare scheme renormalises over one token per label: the same call, one column each
    bare = scoring_plan("en", qwen2_tok, prefill=False)
    np.testing.assert_allclose(first_token_probs(logits, bare)[1], np.full(6, 1 / 6), rtol=1e-6)


def test_sequence_probs_and_mass_by_hand():
    totals = np.log(np.array([[1.0, 2, 3, 4, 5, 5]]) / 100)
    probs, mass = sequence_scores(totals)
    np.testing.assert_allclose(probs[0], np.array([1, 2, 3, 4, 5, 5]) / 20, rtol=1e-6)
    np.testing.assert_allclose(mass, [0.2], rtol=1e-6)
    np.testing.assert_allclose(sequence_probs(totals - 1000), probs, rtol=1e-6)


def test_prompts_list_every_label_word():
    for language in ("en", "zh"):
        prompt = build_prompt(language, "audio", transcript="台词")
        assert all(word in prompt for word in label_words(language))
        assert "台词" in prompt
    with pytest.raises(ValueError, match=r"unknown prompt language 'fr'"):
        label_words("fr")


def test_family_registry():
    assert set(FAMILY_BUILDERS) == {"qwen2_audio", "qwen2_5_vl", "qwen2_5_omni", "qwen2_5_text"}
    audio = get_family("qwen2_audio")
    assert audio.model_class == "Qwen2AudioForConditionalGeneration" and not audio.vllm_lora
    assert audio.towers == ("audio_tower", "multi_modal_projector") and get_family("qwen2_5_text").towers == ()
    omni = get_family("qwen2_5_omni")
    assert [c["type"] for c in omni.conversation("q", audio=True, video=True)[0]["content"]] == ["video", "audio",
                                                                                                 "text"]
    assert get_family("qwen2_5_text").conversation("q", False, False) == [{"role": "user", "content": "q"}]
    with pytest.raises(ValueError, match=r"unknown model family 'qwen3'; use one of qwen2_audio"):
        get_family("qwen3")
    with pytest.raises(ValueError, match=r"cannot score view 'face'"):
        audio.check_view("face")
