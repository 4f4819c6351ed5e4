"""load_corpus and the CSV readers on small corpora in tmp_path (media files are placeholders)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clips.dataset import (
    DataError,
    clean_transcript,
    load_corpus,
    read_label_csv,
    read_names_csv,
)
from clips.labels import LABELS

BOM = "\ufeff"
POOL = "video-unlabeled-with-test2noise"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"placeholder")


def mer2024(root: Path) -> Path:
    """A small MER2024 release: 3 labelled names (one without media), a pool with noise files around it."""
    write(
        root / "label-disdim.csv",
        BOM + "name,discrete,valence\nsample_a,Happy,1.5\nsample_b, SAD ,-2\nsample_c,neutral,0\n",
    )
    write(
        root / "label-transcription.csv",
        BOM + "name,chinese,english\nsample_a,我很高兴。,I am happy.\nsample_b,<|zh-CN|>,\n",
    )
    write(
        root / "transcription-merge.csv",
        "name,chinese\nsample_a,ASR 高兴\nsample_c,  <|en|>I'm fine. \n"
        "new_1,<|zh-CN|>今天下雨\nnew_2,。。！\nnot_a_clip,ignored\n",
    )
    touch(root / "video-labeled", "sample_a.mp4", "sample_b.avi")
    touch(root / POOL, "new_1.mp4", "new_2.mp4", "new_3.avi", "sample_a.mp4", ".hidden.mp4", "notes.txt")
    (root / POOL / "subfolder.mp4").mkdir()
    return root


def by_name(refs: list) -> dict:
    return {ref.name: ref for ref in refs}


def test_mer2024_layout(tmp_path: Path) -> None:
    root = mer2024(tmp_path)

    corpus = load_corpus(root)

    assert corpus.layout == "mer2024"
    assert [ref.name for ref in corpus.labelled] == ["sample_a", "sample_b", "sample_c"]
    labelled = by_name(corpus.labelled)
    assert labelled["sample_a"].label == "happy" and labelled["sample_b"].label == "sad"
    assert all(ref.label in LABELS for ref in corpus.labelled)
    assert labelled["sample_a"].path == root / "video-labeled" / "sample_a.mp4"
    assert labelled["sample_b"].path == root / "video-labeled" / "sample_b.avi"
    # checked subtitles win over ASR; the English column is not used
    assert labelled["sample_a"].transcript == "我很高兴。"
    assert labelled["sample_a"].status == ()
    # label-transcription holds only a token; ASR has no row either
    assert labelled["sample_b"].transcript is None
    assert labelled["sample_b"].status == ("empty_transcript",)
    # no media file: kept, flagged, its transcript still there (English kept as is)
    assert labelled["sample_c"].path is None
    assert labelled["sample_c"].transcript == "I'm fine."
    assert labelled["sample_c"].status == ("no_media",)

    # the pool: sorted, labelled sample_a left out, hidden/non-media/folders ignored
    assert [ref.name for ref in corpus.unlabelled] == ["new_1", "new_2", "new_3"]
    pool = by_name(corpus.unlabelled)
    assert all(ref.label is None for ref in corpus.unlabelled)
    assert pool["new_1"].path == root / POOL / "new_1.mp4"
    assert pool["new_1"].transcript == "今天下雨"
    assert pool["new_2"].transcript is None and pool["new_2"].status == ("empty_transcript",)
    assert pool["new_3"].status == ("empty_transcript",)
    assert [ref.name for ref in corpus.all()] == [*labelled, *pool]
    assert corpus.duplicates == {}


def test_checked_subtitle_that_is_empty_falls_back_to_asr(tmp_path: Path) -> None:
    root = mer2024(tmp_path)
    write(root / "transcription-merge.csv", "name,chinese\nsample_b,ASR 难过\n")

    assert by_name(load_corpus(root).labelled)["sample_b"].transcript == "ASR 难过"


def test_mer2024_without_transcripts_or_pool(tmp_path: Path) -> None:
    write(tmp_path / "label-disdim.csv", "name,discrete\nsample_a,worried\n")
    touch(tmp_path / "video-labeled", "sample_a.mp4")

    corpus = load_corpus(tmp_path)

    assert corpus.unlabelled == []
    assert corpus.labelled[0].status == ("empty_transcript",)
    assert corpus.labelled[0].label == "worried"


def test_unlabelled_folder_found_by_name(tmp_path: Path) -> None:
    write(tmp_path / "label-disdim.csv", "name,discrete\n")
    touch(tmp_path / "my-Unlabelled-clips", "u1.mp4")
    touch(tmp_path / "audio", "u2.wav")

    corpus = load_corpus(tmp_path)

    assert corpus.labelled == []
    assert [ref.path for ref in corpus.unlabelled] == [tmp_path / "my-Unlabelled-clips" / "u1.mp4"]


def test_unlabelled_folder_given_explicitly(tmp_path: Path) -> None:
    root = mer2024(tmp_path)
    touch(root / "video-unlabeled-extra", "x1.mp4")  # two candidates: only the explicit choice is usable
    touch(root / "test3", "t1.mp4", "t2.mp4")

    assert [ref.name for ref in load_corpus(root, unlabelled_dir="test3").unlabelled] == ["t1", "t2"]
    with pytest.raises(DataError) as error:
        load_corpus(root)
    assert f"several unlabelled folders (video-unlabeled-extra, {POOL})" in str(error.value)
    assert "unlabelled_dir" in str(error.value)


def test_missing_explicit_unlabelled_folder_lists_the_folders(tmp_path: Path) -> None:
    root = mer2024(tmp_path)

    with pytest.raises(DataError) as error:
        load_corpus(root, unlabelled_dir="video-unlabelled")

    message = str(error.value)
    assert f"{root / 'video-unlabelled'}: unlabelled folder not found" in message
    assert f"folders in {root}: video-labeled, {POOL}" in message


def test_duplicate_stems_keep_the_preferred_suffix(tmp_path: Path) -> None:
    root = mer2024(tmp_path)
    touch(root / "video-labeled", "sample_a.avi", "sample_c.wav", "sample_c.webm")

    corpus = load_corpus(root)

    labelled = by_name(corpus.labelled)
    assert labelled["sample_a"].path.name == "sample_a.mp4"
    assert labelled["sample_c"].path.name == "sample_c.webm"
    assert labelled["sample_c"].status == ()
    assert corpus.duplicates == {
        "sample_a": [root / "video-labeled" / "sample_a.avi"],
        "sample_c": [root / "video-labeled" / "sample_c.wav"],
    }


def test_labelled_media_without_a_label_row_joins_the_pool(tmp_path: Path) -> None:
    root = mer2024(tmp_path)
    touch(root / "video-labeled", "sample_z.mp4")

    assert by_name(load_corpus(root).unlabelled)["sample_z"].path == root / "video-labeled" / "sample_z.mp4"


def test_label_csv_lists_every_bad_row(tmp_path: Path) -> None:
    path = write(
        tmp_path / "label-disdim.csv",
        "name,discrete\n"
        "ok_1,happy\n"
        "ok_2,joyful\n"  # line 3: unknown label
        ",sad\n"  # line 4: empty name
        "../escape,sad\n"  # line 5: unsafe
        "a/b,sad\n"  # line 6: unsafe
        "\n"  # line 7: blank, skipped
        "ok_1,Sad\n"  # line 8: duplicate of line 2
        "ok_3,\n",  # line 9: empty label
    )

    with pytest.raises(DataError) as error:
        read_label_csv(path)

    valid = ", ".join(LABELS)
    expected = [
        f"{path}: 6 bad row(s):",
        f"{path}:3: unknown label 'joyful' for 'ok_2' -- use one of {valid}",
        f"{path}:4: empty name -- fill in the clip's name or delete the row",
        f"{path}:5: name '../escape' is unsafe as a file name (the name contains a path separator or control "
        "character) -- rename it",
        f"{path}:6: name 'a/b' is unsafe as a file name (the name contains a path separator or control "
        "character) -- rename it",
        f"{path}:8: duplicate name 'ok_1', also on line 2 -- keep one row per clip",
        f"{path}:9: unknown label '' for 'ok_3' -- use one of {valid}",
    ]
    assert str(error.value) == "\n".join(expected)


def test_load_corpus_raises_the_label_csv_problems(tmp_path: Path) -> None:
    root = mer2024(tmp_path)
    write(root / "label-disdim.csv", "name,discrete\nsample_a,happy\nsample_b,bored\n")

    with pytest.raises(DataError, match=r"label-disdim.csv:3: unknown label 'bored' for 'sample_b'"):
        load_corpus(root)


def test_label_csv_missing_column_names_found_and_needed(tmp_path: Path) -> None:
    path = write(tmp_path / "labels.csv", BOM + "Name,emotion,valence\na,happy,1\n")

    with pytest.raises(DataError) as error:
        read_label_csv(path)

    assert str(error.value) == (
        f"{path}:1: missing column(s) discrete -- found columns name, emotion, valence; "
        "the file needs name, discrete"
    )


def test_label_csv_reads_bom_and_case(tmp_path: Path) -> None:
    path = write(tmp_path / "labels.csv", BOM + "name,discrete\nb,SURPRISE\na,Worried\n")

    assert read_label_csv(path) == {"b": "surprise", "a": "worried"}


def test_empty_or_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="the file is empty -- it needs a header row name,discrete"):
        read_label_csv(write(tmp_path / "empty.csv", ""))
    with pytest.raises(DataError, match="file not found"):
        read_label_csv(tmp_path / "absent.csv")


def test_read_names_csv(tmp_path: Path) -> None:
    good = write(tmp_path / "names.csv", BOM + "name\nz_clip\na_clip\n")
    assert read_names_csv(good) == ["z_clip", "a_clip"]  # file order: the submission follows it

    bad = write(tmp_path / "bad.csv", "name,extra\nx,1\n,2\nx,3\n..\\up,4\n")
    with pytest.raises(DataError) as error:
        read_names_csv(bad)
    assert str(error.value).splitlines() == [
        f"{bad}: 3 bad row(s):",
        f"{bad}:3: empty name -- fill in the clip's name or delete the row",
        f"{bad}:4: duplicate name 'x', also on line 2 -- keep one row per clip",
        f"{bad}:5: name '..\\\\up' is unsafe as a file name (the name contains a path separator or control "
        "character) -- rename it",
    ]
    with pytest.raises(DataError, match="missing column"):
        read_names_csv(write(tmp_path / "noname.csv", "clip\nx\n"))


def test_transcript_csv_problems(tmp_path: Path) -> None:
    root = mer2024(tmp_path)
    path = write(root / "transcription-merge.csv", "name,chinese\nnew_1,一\nnew_2,二\nnew_1,三\n,四\n")

    with pytest.raises(DataError) as error:
        load_corpus(root)
    assert str(error.value).splitlines() == [
        f"{path}: 2 bad row(s):",
        f"{path}:4: duplicate name 'new_1', also on line 2 -- keep one row per transcript",
        f"{path}:5: empty name -- fill in the transcript's name or delete the row",
    ]

    write(root / "transcription-merge.csv", "name,english\nnew_1,one\n")
    with pytest.raises(DataError) as error:
        load_corpus(root)
    assert str(error.value) == (
        f"{path}:1: no text column -- found columns name, english; the file needs name and one of chinese"
    )


def test_generic_layout(tmp_path: Path) -> None:
    touch(tmp_path, "c1.mp4", "c3.wav", "readme.md")
    touch(tmp_path / "media", "c2.mkv", "c4.avi", "c4.mp3")
    write(tmp_path / "labels.csv", "name,discrete\nc1,Angry\nc2,happy\nc9,sad\n")
    write(tmp_path / "transcripts.csv", "name,text\nc1,<|en|>Get out!\nc3,<|zh-CN|>\nc4,你好\n")

    corpus = load_corpus(tmp_path)

    assert corpus.layout == "generic"
    labelled = by_name(corpus.labelled)
    assert [ref.name for ref in corpus.labelled] == ["c1", "c2", "c9"]
    assert labelled["c1"].label == "angry" and labelled["c1"].path == tmp_path / "c1.mp4"
    assert labelled["c1"].transcript == "Get out!"
    assert labelled["c2"].path == tmp_path / "media" / "c2.mkv"
    assert labelled["c9"].status == ("empty_transcript", "no_media")
    pool = by_name(corpus.unlabelled)
    assert list(pool) == ["c3", "c4"]
    assert pool["c3"].transcript is None and pool["c3"].status == ("empty_transcript",)
    assert pool["c4"].path == tmp_path / "media" / "c4.avi" and pool["c4"].transcript == "你好"
    assert corpus.duplicates == {"c4": [tmp_path / "media" / "c4.mp3"]}


def test_generic_layout_chinese_column_and_no_labels(tmp_path: Path) -> None:
    touch(tmp_path, "c1.mp4")
    write(tmp_path / "transcripts.csv", "name,chinese\nc1,好\n")

    corpus = load_corpus(tmp_path)

    assert corpus.labelled == []
    assert corpus.unlabelled[0].transcript == "好"


def test_missing_or_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        load_corpus(tmp_path / "absent")
    with pytest.raises(DataError, match="no label-disdim.csv"):
        load_corpus(tmp_path)


def test_unsafe_media_file_name(tmp_path: Path) -> None:
    touch(tmp_path, " padded.mp4", "fine.mp4")

    with pytest.raises(DataError, match="leading or trailing blanks -- rename the file"):
        load_corpus(tmp_path)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("<|zh-CN|>", None),
        ("<|zh-CN|><|en|>  ", None),
        ("", None),
        (None, None),
        ("。，！？…", None),
        ("  <|en|>Hello there. ", "Hello there."),
        ("<|zh-CN|>我没事<|nospeech|>", "我没事"),
        ("iamfinethankyou", "iamfinethankyou"),
        ("3", "3"),
    ],
)
def test_clean_transcript(raw: str | None, clean: str | None) -> None:
    assert clean_transcript(raw) == clean
