import numpy as np

from clips.dataset import ClipRef
from llm.hf_backend import encode_requests
from llm.requests import ClipMedia, RequestSettings, build_request


def test_audio_part_renders_in_the_official_qwen2_audio_template(tiny_loaded, tiny_family):
    _, processor = tiny_loaded("qwen2_audio")
    media = ClipMedia(name="c", audio=np.zeros(16_000, np.float32), frames=None)
    request = build_request(tiny_family("qwen2_audio"), processor, media, RequestSettings(view="audio"))
    # the template tests `'audio' in content`: a part with only {"type": "audio"} would render no placeholder
    assert "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n" in request.prompt


def test_video_fps_comes_from_the_frames_and_the_clip_duration(tiny_loaded, tiny_family):
    _, processor = tiny_loaded("qwen2_5_vl")
    family = tiny_family("qwen2_5_vl")
    rng = np.random.default_rng(0)
    clips = [ClipMedia(name=f"c{i}", audio=None, frames=rng.integers(0, 255, (8, 112, 112, 3), dtype=np.uint8),
                       duration=seconds) for i, seconds in enumerate([5.0, 2.0])]
    requests = [build_request(family, processor, m, RequestSettings(view="frames")) for m in clips]
    assert [r.fps for r in requests] == [1.6, 4.0]  # 8 frames over 5 s and over 2 s
    inputs = encode_requests(processor, family, requests)
    # Qwen2.5-VL: seconds per temporal patch (2 frames) = 2 / fps, per video
    np.testing.assert_allclose(inputs["second_per_grid_ts"].numpy(), [2 / 1.6, 2 / 4.0], rtol=1e-6)
    unknown = build_request(family, processor, ClipMedia("u", None, clips[0].frames), RequestSettings(view="frames"))
    assert unknown.fps is None
    np.testing.assert_allclose(encode_requests(processor, family, [unknown])["second_per_grid_ts"].numpy(), [1.0])


def test_frame_size_is_an_agent_option(tmp_path, write_clip):
    from teacher.llm_agent import ClipRequests
    from teacher.llm_options import LLMAgentOptions

    path = write_clip(tmp_path / "v.mp4", seconds=1.0)
    ref = ClipRef(name="v", path=path, label=None, transcript=None)
    options = LLMAgentOptions(model="m", family="qwen2_5_vl", view="frames", num_frames=4, frame_side=64)
    media = ClipRequests(options, processor=None).media(ref)
    assert media.frames.shape == (4, 64, 64, 3) and abs(media.duration - 1.0) < 0.15
    assert LLMAgentOptions(model="m", family="qwen2_5_vl").frame_side == 448
