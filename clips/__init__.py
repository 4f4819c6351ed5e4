"""Data layer: reads the MER2024 release (or a generic folder), decodes media, tracks per-clip status.

Usage:
    from clips.dataset import load_corpus
    corpus = load_corpus(Path("mer2024-dataset"))
    from clips.media import decode_clip
    clip = decode_clip(corpus.labelled[0].path, name=corpus.labelled[0].name)
"""
