"""HF extractors (hubert, clip, hf_text) on tiny randomly initialised models saved to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    HubertConfig,
    HubertModel,
    Wav2Vec2FeatureExtractor,
)

from clips.media import SAMPLE_RATE, DecodedClip
from features import FeatureResult, build_extractor, cache_key
from features.hf import audio_chunks, sum_last_layers

VISION = dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=2)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of a tiny HuBERT, CLIP vision model, full CLIP model and BERT with their processors."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_models")
    hubert = HubertConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    HubertModel(hubert).save_pretrained(root / "hubert")
    Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE, do_normalize=True).save_pretrained(root / "hubert")

    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPVisionModel(CLIPVisionConfig(num_attention_heads=2, **VISION)).save_pretrained(root / "clip_vision")
    processor.save_pretrained(root / "clip_vision")
    text = dict(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    full = CLIPConfig(
        text_config=text, vision_config=dict(num_attention_heads=2, **VISION), projection_dim=12
    )
    CLIPModel(full).save_pretrained(root / "clip_full")
    processor.save_pretrained(root / "clip_full")

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"我你他很高兴难过生气今天真的", "hello", "world"]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(root / "bert")
    bert = BertConfig(
        vocab_size=len(vocab),
        hidden_size=24,
        num_hidden_layers=5,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    BertModel(bert).save_pretrained(root / "bert")
    return {name: root / name for name in ("hubert", "clip_vision", "clip_full", "bert")}


def clip_with(audio: np.ndarray | None = None, frames: np.ndarray | None = None) -> DecodedClip:
    return DecodedClip(name="c", audio=audio, frames=frames, frame_times=None, duration=1.0)


def test_audio_chunks_merge_a_short_tail() -> None:
    audio = np.arange(int(2.5 * SAMPLE_RATE), dtype=np.float32)
    assert [c.size for c in audio_chunks(audio, 1.0)] == [SAMPLE_RATE, int(1.5 * SAMPLE_RATE)]
    three = audio_chunks(audio, 1.0, min_seconds=0.4)
    assert [c.size for c in three] == [SAMPLE_RATE, SAMPLE_RATE, SAMPLE_RATE // 2]
    assert [c.size for c in audio_chunks(audio[:100], 10.0)] == [100]


def test_hubert_sums_last_four_layers_over_chunks(tiny_models: dict[str, Path]) -> None:
    extractor = build_extractor("hubert", model=str(tiny_models["hubert"]), chunk_seconds=0.5)
    assert extractor.dim == 32 and cache_key(extractor).startswith("hubert-")
    audio = np.random.default_rng(0).standard_normal(int(1.75 * SAMPLE_RATE)).astype(np.float32)
    result = extractor.extract(clip_with(audio=audio), None)
    assert result.vector.shape == (32,) and result.status == ()

    model = HubertModel.from_pretrained(tiny_models["hubert"]).eval()
    processor = Wav2Vec2FeatureExtractor.from_pretrained(tiny_models["hubert"])
    frames = []
    with torch.inference_mode():
        # three chunks: 1 s, 1 s, then 1.5 s (a 0.5 s tail joins the last chunk)
        # three chunks: 0.5 s, 0.5 s, then 0.75 s (the 0.25 s tail joins the last chunk)
        for start, stop in ((0, 8000), (8000, 16000), (16000, audio.size)):
            inputs = processor(audio[start:stop], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
            hidden = model(inputs, output_hidden_states=True).hidden_states  # 5 = embeddings + 4 layers
            frames.append(sum(hidden[-4:])[0])
    manual = torch.cat(frames).mean(dim=0).numpy()
    np.testing.assert_allclose(result.vector, manual, rtol=1e-4, atol=1e-5)
    # one 10 s chunk differs from three short chunks
    whole = build_extractor("hubert", model=str(tiny_models["hubert"])).extract(clip_with(audio=audio), None)
    assert not np.allclose(whole.vector, result.vector)

    assert extractor.extract(clip_with(audio=None), None) == FeatureResult(None, ("no_audio",))
    assert extractor.extract(clip_with(audio=audio[:800]), None) == FeatureResult(None, ("no_audio",))


def test_sum_last_layers_refuses_too_many_layers() -> None:
    states = tuple(torch.ones(1, 2, 3) * i for i in range(3))
    assert sum_last_layers(states, 2)[0, 0, 0].item() == 3.0
    with pytest.raises(ValueError, match="layers=4 is too many"):
        sum_last_layers(states, 4)


@pytest.mark.parametrize("view", ["frame", "face"])
def test_clip_vision_model_on_frames(tiny_models: dict[str, Path], view: str) -> None:
    extractor = build_extractor("clip", model=str(tiny_models["clip_vision"]), view=view)
    assert extractor.dim == 16
    frames = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    result = extractor.extract(clip_with(frames=frames), None)
    assert result.vector.shape == (16,)
    # noise has no face: the face view falls back to the whole frames and says so
    assert result.status == (("no_face",) if view == "face" else ())
    model = CLIPVisionModel.from_pretrained(tiny_models["clip_vision"]).eval()
    pixels = CLIPImageProcessor.from_pretrained(tiny_models["clip_vision"])(
        images=list(frames), return_tensors="pt"
    )
    with torch.inference_mode():
        manual = model(pixel_values=pixels.pixel_values).pooler_output.mean(dim=0).numpy()
    np.testing.assert_allclose(result.vector, manual, rtol=1e-4, atol=1e-5)
    assert extractor.extract(clip_with(frames=None), None) == FeatureResult(None, ("no_video",))


def test_full_clip_model_gives_projected_image_embeddings(tiny_models: dict[str, Path]) -> None:
    extractor = build_extractor("clip", model=str(tiny_models["clip_full"]), view="frame")
    assert extractor.dim == 12
    frames = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert extractor.extract(clip_with(frames=frames), None).vector.shape == (12,)
    with pytest.raises(ValueError, match="view='side'"):
        build_extractor("clip", model=str(tiny_models["clip_full"]), view="side")


def test_hf_text_masked_mean_of_last_four_layers(tiny_models: dict[str, Path]) -> None:
    extractor = build_extractor("hf_text", model=str(tiny_models["bert"]))
    assert extractor.dim == 24
    result = extractor.extract(clip_with(), "今天我很高兴")
    assert result.vector.shape == (24,) and result.status == ()
    model = BertModel.from_pretrained(tiny_models["bert"]).eval()
    tokenizer = BertTokenizerFast.from_pretrained(tiny_models["bert"])
    batch = tokenizer("今天我很高兴", return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    manual = sum(hidden[-4:])[0].mean(dim=0).numpy()  # one sentence: every token is unmasked
    np.testing.assert_allclose(result.vector, manual, rtol=1e-4, atol=1e-5)
    # padding must not change the pooled vector: the mean is attention-masked
    padded = tokenizer("今天我很高兴", return_tensors="pt", padding="max_length", max_length=16)
    with torch.inference_mode():
        hidden = model(**padded, output_hidden_states=True).hidden_states
    mask = padded["attention_mask"][0].bool()
    np.testing.assert_allclose(sum(hidden[-4:])[0][mask].mean(dim=0).numpy(), manual, rtol=1e-4, atol=1e-5)
    for transcript in (None, " "):
        assert extractor.extract(clip_with(), transcript) == FeatureResult(None, ("empty_transcript",))
