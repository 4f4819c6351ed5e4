import logging

import numpy as np
import pytest

from clips.labels import LABELS
from llm.families import FAMILY_BUILDERS, get_family
from llm.prompts import build_prompt, label_words
from llm.scoring import first_token_probs, plan_scoring, sequence_probs


def test_english_labels_first_token_on_real_qwen2_vocab(qwen2_tok, caplog):
    caplog.set_level(logging.INFO, logger="llm.scoring")
    plan = plan_scoring(label_words("en"), qwen2_tok)
    assert plan.words == LABELS
    assert plan.mode == "first_token"
    # neutral, ang|ry, happy, sad, wor|ried, surpr|ise: distinct first tokens
    assert plan.first_ids == (59568, 524, 56521, 82114, 49710, 19784)
    assert plan.multi_token == ("angry", "worried", "surprise")
    assert plan.answer_ids[1] == (524, 884, 151645)
    assert "first-token logits" in caplog.text


def test_chinese_labels_first_token_on_real_qwen2_vocab(qwen2_tok):
    plan = plan_scoring(label_words("zh"), qwen2_tok)
    assert plan.words == ("中性", "生气", "高兴", "悲伤", "担心", "惊讶")
    assert plan.mode == "first_token"
    assert plan.first_ids == (15946, 106353, 102483, 110597, 102142, 107664)
    assert plan.multi_token == ("中性",)  # 中 + 性
    assert [qwen2_tok.decode([i]) for i in plan.first_ids] == ["中", "生气", "高兴", "悲伤", "担心", "惊讶"]
    # the alternatives listed in the brief are single tokens too
    for word, token in [("愤怒", 108299), ("开心", 102313), ("难过", 110702), ("焦虑", 107115)]:
        assert qwen2_tok(word, add_special_tokens=False)["input_ids"] == [token]


def test_colliding_first_tokens_fall_back_to_sequence_scoring_loudly(qwen2_tok, caplog):
    words = ("中性", "中立", "高兴", "悲伤", "担心", "惊讶")  # both start with 中 (15946)
    caplog.set_level(logging.WARNING, logger="llm.scoring")
    plan = plan_scoring(words, qwen2_tok)
    assert plan.mode == "sequence"
    assert plan.first_ids[0] == plan.first_ids[1] == 15946
    assert "SEQUENCE" in caplog.text and "中立" in caplog.text
    with pytest.raises(ValueError, match=r"share a first token"):
        plan_scoring(words, qwen2_tok, mode="first_token")
    assert plan_scoring(label_words("en"), qwen2_tok, mode="sequence").mode == "sequence"


def test_first_token_and_sequence_probs_by_hand(qwen2_tok):
    plan = plan_scoring(label_words("en"), qwen2_tok)
    logits = np.zeros((2, len(qwen2_tok)), np.float32)
    logits[0, plan.first_ids[2]] = np.log(3.0)          # happy three times as likely as each other label
    logits[1, 7] = 50.0                                 # mass on a non-label token is renormalised away
    probs = first_token_probs(logits, plan)
    np.testing.assert_allclose(probs[0], np.array([1, 1, 3, 1, 1, 1]) / 8, rtol=1e-6)
    np.testing.assert_allclose(probs[1], np.full(6, 1 / 6), rtol=1e-6)
    seq = sequence_probs(np.log(np.array([[1.0, 2, 3, 4, 5, 5]])) - 1000)
    np.testing.assert_allclose(seq[0], np.array([1, 2, 3, 4, 5, 5]) / 20, rtol=1e-6)


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
    omni = get_family("qwen2_5_omni")
    assert [c["type"] for c in omni.conversation("q", audio=True, video=True)[0]["content"]] == ["video", "audio",
                                                                                                 "text"]
    assert get_family("qwen2_5_text").conversation("q", False, False) == [{"role": "user", "content": "q"}]
    with pytest.raises(ValueError, match=r"unknown model family 'qwen3'; use one of qwen2_audio"):
        get_family("qwen3")
    with pytest.raises(ValueError, match=r"cannot score view 'face'"):
        audio.check_view("face")
