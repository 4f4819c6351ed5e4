"""GPU-path extractors on Hugging Face transformers models, from a local folder or hub id (option `model`).

Usage:
    hubert = HubertExtractor(model="/models/chinese-hubert-large")   # sum of last 4 layers, 10 s chunks
    clip = ClipExtractor(model="/models/clip-vit-large-patch14", view="face")
    text = HFTextExtractor(model="/models/chinese-roberta-wwm-ext")
    result = hubert.extract(decoded_clip, transcript=None)
Models load on the first extract() (weights via from_pretrained, safetensors only), on default_device(), in
bfloat16 on CUDA. dim comes from the model's config.json, read when first asked for.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clips.media import SAMPLE_RATE, DecodedClip
from features.base import FeatureResult, finite_vector, missing
from features.face import FaceDetector


def default_device() -> Any:
    """torch.device("cuda") when a GPU is available, else the CPU: the one device helper of the extractors."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(model_cls: Any, model: str, device: Any) -> Any:
    """`model_cls.from_pretrained(model)` (safetensors only) in eval mode on `device`, bf16 on CUDA."""
    import torch

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    network = model_cls.from_pretrained(model, use_safetensors=True, dtype=dtype)
    return network.to(device).eval()


def sum_last_layers(hidden_states: tuple[Any, ...], layers: int) -> Any:
    """Sum of the last `layers` hidden states, (batch, time, hidden), as the MER2024 baseline pools them.

    Raises:
        ValueError: when the model has fewer hidden states than `layers`.
    """
    import torch

    if len(hidden_states) < layers:
        raise ValueError(
            f"the model has {len(hidden_states)} hidden states; option layers={layers} is too many"
        )
    return torch.stack(hidden_states[-layers:]).sum(dim=0)


def audio_chunks(audio: np.ndarray, chunk_seconds: float, min_seconds: float = 1.0) -> list[np.ndarray]:
    """`audio` cut into chunks of `chunk_seconds`; a tail shorter than `min_seconds` joins the previous."""
    step = max(int(chunk_seconds * SAMPLE_RATE), 1)
    bounds = list(range(0, len(audio), step)) + [len(audio)]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < min_seconds * SAMPLE_RATE:
        del bounds[-2]
    return [audio[start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]


@functools.cache
def _config(model: str) -> Any:
    """The model's config, read once per process (every `dim` lookup asks for it)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model)


@dataclass
class HubertExtractor:
    """HuBERT on 16 kHz audio: chunks, sum of the last `layers` hidden states, mean over all frames."""

    model: str = "TencentGameMate/chinese-hubert-large"
    layers: int = 4
    chunk_seconds: float = 10.0
    min_seconds: float = 0.1
    name: str = field(default="hubert", init=False)
    modality: str = field(default="audio", init=False)
    _net: Any = field(default=None, init=False, repr=False)
    _processor: Any = field(default=None, init=False, repr=False)

    @property
    def dim(self) -> int:
        """Hidden size of the model (from its config)."""
        return int(_config(self.model).hidden_size)

    def settings(self) -> dict:
        """Model, pooled layers, chunk length and the minimum audio length."""
        return {
            "model": str(self.model),
            "layers": self.layers,
            "chunk_seconds": self.chunk_seconds,
            "min_seconds": self.min_seconds,
            "pool": "sum_last_layers+mean_time",
        }

    def extract(self, clip: DecodedClip, transcript: str | None) -> FeatureResult:
        """(hidden,) mean over time of the summed last layers; missing ("no_audio") without enough audio."""
        import torch
        from transformers import HubertModel, Wav2Vec2FeatureExtractor

        if clip.audio is None or clip.audio.size < self.min_seconds * SAMPLE_RATE:
            return missing("audio")
        if self._net is None:
            self._processor = Wav2Vec2FeatureExtractor.from_pretrained(self.model)
            self._net = _load(HubertModel, self.model, default_device())
        device, dtype = self._net.device, self._net.dtype
        frames = []
        with torch.inference_mode():
            for chunk in audio_chunks(clip.audio.astype(np.float32), self.chunk_seconds):
                inputs = self._processor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
                out = self._net(inputs.to(device, dtype), output_hidden_states=True)
                frames.append(sum_last_layers(out.hidden_states, self.layers)[0].float())  # (time, hidden)
        pooled = torch.cat(frames).mean(dim=0)
        return FeatureResult(finite_vector(pooled.cpu().numpy(), self.dim))


@dataclass
class ClipExtractor:
    """CLIP image features of face crops (view="face", whole-frame fallback) or frames, mean over frames."""

    model: str = "openai/clip-vit-large-patch14"
    view: str = "face"
    num_frames: int = 8
    detect_side: int = 160
    min_size: int = 40
    name: str = field(default="clip", init=False)
    modality: str = field(default="visual", init=False)
    _net: Any = field(default=None, init=False, repr=False)
    _processor: Any = field(default=None, init=False, repr=False)
    detector: FaceDetector = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.view not in ("face", "frame"):
            raise ValueError(f"clip option view={self.view!r} is unknown; use 'face' or 'frame'")
        self.detector = FaceDetector(detect_side=self.detect_side, min_size=self.min_size)

    def _is_full_clip(self) -> bool:
        return _config(self.model).model_type == "clip"

    @property
    def dim(self) -> int:
        """projection_dim for a full CLIPModel checkpoint (image embeddings), else the vision hidden size."""
        config = _config(self.model)
        return int(config.projection_dim if config.model_type == "clip" else config.hidden_size)

    def settings(self) -> dict:
        """Model, view, frames per clip and the face detector's parameters."""
        return {
            "model": str(self.model),
            "view": self.view,
            "num_frames": self.num_frames,
            "detector": self.detector.settings() if self.view == "face" else None,
        }

    def _images(self, frames: np.ndarray) -> tuple[list[np.ndarray], tuple[str, ...]]:
        if self.view == "frame":
            return list(frames), ()
        boxes, _ = self.detector.detect(frames)
        crops = []
        for frame, box in zip(frames, boxes, strict=True):
            if box is not None:
                x, y, w, h = box
                crops.append(np.ascontiguousarray(frame[max(y, 0) : y + h, max(x, 0) : x + w]))
        return (crops, ()) if crops else (list(frames), ("no_face",))

    def extract(self, clip: DecodedClip, transcript: str | None) -> FeatureResult:
        """(dim,) mean image feature; ("no_face",) when frames stood in; missing ("no_video") w/o frames."""
        import torch
        from transformers import CLIPImageProcessor, CLIPModel, CLIPVisionModel

        if clip.frames is None or len(clip.frames) == 0:
            return missing("visual")
        if self._net is None:
            self._processor = CLIPImageProcessor.from_pretrained(self.model)
            model_cls = CLIPModel if self._is_full_clip() else CLIPVisionModel
            self._net = _load(model_cls, self.model, default_device())
        images, status = self._images(clip.frames)
        pixels = self._processor(images=images, return_tensors="pt").pixel_values
        pixels = pixels.to(self._net.device, self._net.dtype)
        with torch.inference_mode():
            if hasattr(self._net, "get_image_features"):
                out = self._net.get_image_features(pixel_values=pixels)
                # transformers 5 returns an output object whose pooler_output is the projected embedding
                embeds = out if isinstance(out, torch.Tensor) else out.pooler_output
            else:
                embeds = self._net(pixel_values=pixels).pooler_output
        return FeatureResult(finite_vector(embeds.float().mean(dim=0).cpu().numpy(), self.dim), status)


@dataclass
class HFTextExtractor:
    """Text encoder on the transcript: sum of the last `layers` hidden states, masked mean over tokens."""

    model: str = "hfl/chinese-roberta-wwm-ext"
    layers: int = 4
    max_length: int = 512
    name: str = field(default="hf_text", init=False)
    modality: str = field(default="text", init=False)
    _net: Any = field(default=None, init=False, repr=False)
    _tokenizer: Any = field(default=None, init=False, repr=False)

    @property
    def dim(self) -> int:
        """Hidden size of the model (from its config)."""
        return int(_config(self.model).hidden_size)

    def settings(self) -> dict:
        """Model, pooled layers and the token limit."""
        return {
            "model": str(self.model),
            "layers": self.layers,
            "max_length": self.max_length,
            "pool": "sum_last_layers+masked_mean",
        }

    def extract(self, clip: DecodedClip, transcript: str | None) -> FeatureResult:
        """(hidden,) pooled embedding; missing ("empty_transcript") when the transcript is None or blank."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        if transcript is None or not transcript.strip():
            return missing("text")
        if self._net is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
            self._net = _load(AutoModel, self.model, default_device())
        batch = self._tokenizer(
            transcript.strip(), return_tensors="pt", truncation=True, max_length=self.max_length
        )
        batch = {k: v.to(self._net.device) for k, v in batch.items()}
        with torch.inference_mode():
            out = self._net(**batch, output_hidden_states=True)
        summed = sum_last_layers(out.hidden_states, self.layers).float()  # (1, tokens, hidden)
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (1, tokens, 1)
        pooled = (summed * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return FeatureResult(finite_vector(pooled[0].cpu().numpy(), self.dim))
