import numpy as np
import pytest

from clips.dataset import ClipRef
from clips.media import decode_clip
from llm.decoded import DecodedCache, DecodeSettings, prefetch


@pytest.fixture
def clip_refs(tmp_path, write_clip) -> list[ClipRef]:
    refs = [ClipRef(name=f"v{i}", path=write_clip(tmp_path / f"v{i}.mp4", seconds=1.0, seed=i), label=None,
                    transcript=None) for i in range(3)]
    return refs + [ClipRef(name="gone", path=None, label=None, transcript=None)]


def test_workers_decode_ahead_once_and_later_readers_use_the_files(clip_refs, tmp_path, monkeypatch):
    import llm.decoded

    settings = DecodeSettings(num_frames=4, frame_side=96)
    media = list(DecodedCache(tmp_path / "decoded", settings, workers=2, ahead=2).iter_media(clip_refs))
    assert media[3] is None
    for ref, got in zip(clip_refs[:3], media[:3], strict=True):
        direct = decode_clip(ref.path, name=ref.name, num_frames=4, max_side=96)
        np.testing.assert_array_equal(got.frames, direct.frames)
        np.testing.assert_array_equal(got.audio, direct.audio)
        assert got.duration == pytest.approx(direct.duration) and got.faces is None
    assert len(list((tmp_path / "decoded" / settings.key()).glob("*.npz"))) == 3

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(llm.decoded, "decode_media", no_decoding)
    again = list(DecodedCache(tmp_path / "decoded", settings, workers=0).iter_media(clip_refs[:3]))
    for first, second in zip(media[:3], again, strict=True):
        np.testing.assert_array_equal(first.frames, second.frames)
        np.testing.assert_array_equal(first.audio, second.audio)
    assert DecodeSettings(num_frames=4, frame_side=96, faces=True).key() != settings.key()
    with pytest.raises(AssertionError, match="decoded again"):  # other settings, other files
        DecodedCache(tmp_path / "decoded", DecodeSettings(num_frames=8), workers=0).media(clip_refs[0])


def test_prefetch_keeps_the_order():
    assert list(prefetch(abs, [-3, 1, -2, 5, -8], workers=2, ahead=2)) == [3, 1, 2, 5, 8]
    assert list(prefetch(abs, [-1, 2], workers=0, ahead=1)) == [1, 2]


def test_face_view_finds_a_wide_shot_face_and_frames_keep_their_size(tmp_path):
    from bench.features import write_mp4
    from bench.scenes import background, face_hit, load_portraits, wide_shot
    from clips.faces import BlazeFace
    from llm.views import FACE_MARGIN, FACE_SIZE

    rng = np.random.default_rng(3)
    scene, portrait = background(rng), load_portraits()[0]
    # a face 64 pixels wide in 1280x720: 48 at the face view's 960, 22 in the 448-pixel frames the model sees
    shots = [wide_shot(rng, portrait, 64, scene, (500 + 3 * i, 250)) for i in range(10)]
    path = write_mp4(tmp_path / "wide.mp4", np.stack([frame for frame, _ in shots]),
                     np.zeros(16_000, np.float32), fps=10)
    settings = DecodeSettings(num_frames=4, frame_side=448, faces=True)

    media = DecodedCache(None, settings, workers=0).media(ClipRef("wide", path, None, None))

    assert media.frames.shape == (4, 252, 448, 3)
    assert media.faces.shape == (4, FACE_SIZE, FACE_SIZE, 3)
    # each crop is centred on the face, which fills about 1 / (1 + 2 margin) of its side
    for crop in media.faces:
        faces = BlazeFace("short")(crop)
        assert len(faces) == 1
        width = FACE_SIZE / (1 + 2 * FACE_MARGIN)
        centre = FACE_SIZE / 2 - width / 2
        assert face_hit(faces[0].box, (centre - 0.15 * width, centre - 0.15 * width, 1.3 * width, 1.3 * width))
