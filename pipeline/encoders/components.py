"""Every non-transformer component of HY-WorldPlay, loaded from a diffusers-layout folder.

The folder is ``hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v`` (or the tiny fixture written by
:mod:`pipeline.tools.tiny`); its ``transformer/`` folder is never read.

What must match upstream (Tencent-Hunyuan/HY-WorldPlay ``worldplay_video_pipeline.py`` and its text /
vision encoder wrappers) and how this module does it:

* **Qwen2.5-VL prompt** — the *video* system message in a ChatML conversation
  (``format_text_input`` from diffusers' HunyuanVideo-1.5 pipeline), ``add_generation_prompt=True``,
  right padding to ``1000 + crop_start`` tokens. ``crop_start`` is computed like upstream: the index just
  after ``"<|im_start|>user\\n"`` in the templated token ids (diffusers hard-codes 108 for the real
  tokenizer). The embedding is the hidden state three from the end (``hidden_states[-3]``: upstream's
  ``hidden_state_skip_layer=2``, no final norm), cropped to the 1000 prompt positions.
  Because nothing after that layer is used, the last two decoder layers and the final norm are dropped
  at load time (never even allocated): same numbers, ~1 GB less GPU memory, ~7 % less encoder work.
* **byT5 glyph text** — quoted substrings (``"..."`` or ``“...”``, de-duplicated when several) formatted
  as ``Text "a". Text "b". `` and tokenised to 256 positions; without quotes the embedding and mask are
  all zeros. Reused unchanged from diffusers (``_get_byt5_prompt_embeds``), which matches upstream.
  Upstream runs this encoder in fp32; so do we by default (``byt5_dtype``), casting the output.
* **SigLIP** — the input image is first resized (Lanczos, cover) and centre-cropped to the generation
  bucket, then the SigLIP processor (PIL backend: bicubic resize to its square size, /255, mean 0.5,
  std 0.5) runs on that crop; the output is ``last_hidden_state`` (729 x 1152 at full size).
* **Buckets** — upstream's 480p list (``generate_crop_size_list(640, 16)``) and a *plain* nearest
  aspect ratio (upstream's ``get_closest_ratio``; diffusers' copy only looks on one side of the ratio
  and can pick a different bucket, so it is not used). 16:9 gives 848x480.
* **VAE** — condition latents are ``encode(x).latent_dist.mode() * scaling_factor`` with ``x`` the
  cropped image in [-1, 1], shape [1, 3, 1, H, W]; decoding divides by ``scaling_factor`` (the config
  has no shift factor), decodes like upstream's ``hunyuanvideo_15_vae_w_cache`` (latent by latent with
  causal caches, the mid-block attention within each latent frame: :mod:`pipeline.encoders.causal_decode`) and
  maps ``x / 2 + 0.5`` clamped to [0, 1]. Frames to uint8 truncate
  (``(x * 255).clamp(0, 255).to(uint8)``) like upstream's ``save_video``.
* **Scheduler** — flow-matching Euler with shift 5: sigmas ``linspace(1, 0, N + 1)[:-1]`` shifted by
  ``s' = shift * s / (1 + (shift - 1) * s)``, timesteps ``1000 * sigma`` (4 steps: 1000, 937.5, 833.3,
  625), a terminal sigma of 0. Use :func:`set_timesteps`, not ``scheduler.set_timesteps(n)``
  (diffusers' default spacing differs from upstream's).

Precision: upstream runs Qwen and SigLIP in fp16 and the VAE with fp32 weights under fp16 autocast;
here everything follows the ``dtype`` given (bf16 on the GPU), except byT5 (fp32 by default).
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from pipeline.encoders.causal_decode import DEFAULT_LATENTS_PER_STEP, CausalVAEDecoder
from pipeline.errors import ImageError, ModelNotFoundError

if TYPE_CHECKING:  # heavy imports stay lazy for modules that only need the image helpers
    from diffusers import AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler

logger = logging.getLogger(__name__)

Device = Union[str, torch.device]

# --- constants that must equal upstream's -----------------------------------------------------------

#: System message of upstream's "li-dit-encode-video-json" template (the one its i2v generation uses).
#: The odd runs of spaces are part of the string the model was trained with.
SYSTEM_MESSAGE = (
    "You are a helpful assistant. Describe the video by detailing the following aspects: "
    "        1. The main content and theme of the video. "
    "        2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects. "
    "        3. Actions, events, behaviors temporal relationships, physical movement changes of the objects. "
    "        4. background environment, light, style and atmosphere. "
    "        5. camera angles, movements, and transitions used in the video."
)
USER_MARKER = "<|im_start|>user\n"
TEXT_MAX_LENGTH = 1000  # prompt tokens kept after the template is cropped
TEXT_SKIP_LAYERS = 2  # hidden_states[-(2 + 1)]
BYT5_MAX_LENGTH = 256
BUCKET_BASE_SIZE = 640  # 480p
BUCKET_STRIDE = 16
MAX_IMAGE_PIXELS = 40_000_000  # refuse larger inputs before decoding them fully
PROMPT_CACHE_SIZE = 8



def _require(root: Path, *names: str) -> None:
    root = Path(root)
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        raise ModelNotFoundError(f"{root} lacks component folder(s) {', '.join(missing)}")


# --- prompt encoding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptEmbeddings:
    """Conditioning from one prompt; batch 1, on the encoders' device.

    Masks are int64 with 1 for a real token; padding is on the right, so valid tokens form a prefix.
    """

    text: torch.Tensor  # [1, 1000, text_dim] Qwen hidden states (template cropped), dtype
    text_mask: torch.Tensor  # [1, 1000] int64
    byt5: torch.Tensor  # [1, 256, byt5_dim] dtype (zeros when the prompt has no quoted text)
    byt5_mask: torch.Tensor  # [1, 256] int64 (all zeros when the prompt has no quoted text)

    @property
    def text_len(self) -> int:
        """Number of valid Qwen tokens."""
        return int(self.text_mask.sum())

    @property
    def byt5_len(self) -> int:
        """Number of valid byT5 tokens (0 without quoted text)."""
        return int(self.byt5_mask.sum())

    def to(self, device: Device | None = None, dtype: torch.dtype | None = None) -> "PromptEmbeddings":
        return replace(
            self,
            text=self.text.to(device=device, dtype=dtype),
            text_mask=self.text_mask.to(device=device),
            byt5=self.byt5.to(device=device, dtype=dtype),
            byt5_mask=self.byt5_mask.to(device=device),
        )


def find_crop_start(tokenizer) -> int:
    """Index of the first prompt token in the templated sequence (upstream's automatic crop start)."""
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import format_text_input

    ids = tokenizer.apply_chat_template(
        format_text_input(["a photo of a cat"], SYSTEM_MESSAGE), add_generation_prompt=True, tokenize=True,
        return_dict=True,
    )["input_ids"][0]
    marker = tokenizer(USER_MARKER, add_special_tokens=False)["input_ids"]
    for i in range(len(ids) - len(marker) + 1):
        if list(ids[i : i + len(marker)]) == list(marker):
            return i + len(marker)
    raise ModelNotFoundError(f"tokenizer's chat template has no {USER_MARKER!r} marker; wrong tokenizer?")


def _load_text_encoder(path: Path, device: Device, dtype: torch.dtype):
    """Qwen2.5-VL text model without its last ``TEXT_SKIP_LAYERS`` layers and final norm.

    Its ``last_hidden_state`` is then the full model's ``hidden_states[-(TEXT_SKIP_LAYERS + 1)]``.
    """
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    config = Qwen2_5_VLTextConfig.from_pretrained(path)
    keep = config.num_hidden_layers - TEXT_SKIP_LAYERS
    if keep < 1:
        raise ModelNotFoundError(f"{path}: text encoder has only {config.num_hidden_layers} layers")
    config.num_hidden_layers = keep
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:keep]
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the dropped layers' weights are reported as unused otherwise
    try:
        model = Qwen2_5_VLTextModel.from_pretrained(path, config=config, dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.norm = torch.nn.Identity()
    return model.eval().requires_grad_(False).to(device)


class ConditionEncoders:
    """Qwen2.5-VL text encoder, byT5 glyph encoder and SigLIP image encoder with their preprocessors."""

    def __init__(
        self,
        *,
        text_encoder,
        tokenizer,
        byt5_encoder,
        byt5_tokenizer,
        image_encoder,
        image_processor,
        dtype: torch.dtype,
        cache_size: int = PROMPT_CACHE_SIZE,
    ):
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.byt5_encoder = byt5_encoder
        self.byt5_tokenizer = byt5_tokenizer
        self.image_encoder = image_encoder
        self.image_processor = image_processor
        self.dtype = dtype
        self.crop_start = find_crop_start(tokenizer)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, PromptEmbeddings] = OrderedDict()
        self._lock = threading.RLock()
        self.encode_count = 0  # prompts actually run through the encoders (cache misses)

    @classmethod
    def from_pretrained(
        cls,
        root: Path,
        device: Device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        *,
        byt5_dtype: torch.dtype | None = torch.float32,
        cache_size: int = PROMPT_CACHE_SIZE,
    ) -> "ConditionEncoders":
        """Load the three encoders from a diffusers-layout folder onto ``device``.

        ``byt5_dtype=None`` runs byT5 in ``dtype`` too (upstream: fp32).
        """
        from transformers import (
            ByT5Tokenizer,
            Qwen2Tokenizer,
            SiglipImageProcessorPil,
            SiglipVisionModel,
            T5EncoderModel,
        )

        root = Path(root)
        _require(root, "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_encoder",
                 "feature_extractor")
        tokenizer = Qwen2Tokenizer.from_pretrained(root / "tokenizer", padding_side="right")
        byt5 = T5EncoderModel.from_pretrained(root / "text_encoder_2", dtype=byt5_dtype or dtype)
        image_encoder = SiglipVisionModel.from_pretrained(root / "image_encoder", dtype=dtype)
        return cls(
            text_encoder=_load_text_encoder(root / "text_encoder", device, dtype),
            tokenizer=tokenizer,
            byt5_encoder=byt5.eval().requires_grad_(False).to(device),
            byt5_tokenizer=ByT5Tokenizer.from_pretrained(root / "tokenizer_2"),
            image_encoder=image_encoder.eval().requires_grad_(False).to(device),
            # The PIL backend is what upstream's transformers version used (and needs no torchvision).
            image_processor=SiglipImageProcessorPil.from_pretrained(root / "feature_extractor"),
            dtype=dtype,
            cache_size=cache_size,
        )

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    def to(self, device: Device) -> "ConditionEncoders":
        """Move the encoders (e.g. off the GPU after encoding). Cached embeddings stay where they are."""
        for module in (self.text_encoder, self.byt5_encoder, self.image_encoder):
            module.to(device)
        return self

    def is_cached(self, prompt: str) -> bool:
        """Whether `encode_prompt(prompt)` would be answered from the cache (no encoder run)."""
        with self._lock:
            return prompt in self._cache

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- text --

    @torch.inference_mode()
    def _encode_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import format_text_input

        device = self.device
        tokens = self.tokenizer.apply_chat_template(
            format_text_input([prompt], SYSTEM_MESSAGE),  # an empty prompt becomes " ", as upstream
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            padding="max_length",
            max_length=TEXT_MAX_LENGTH + self.crop_start,
            truncation=True,
            return_tensors="pt",
        )
        ids = tokens["input_ids"].to(device)
        mask = tokens["attention_mask"].to(device)
        if int(mask.sum()) >= ids.shape[1]:
            logger.warning("prompt truncated to %d tokens", TEXT_MAX_LENGTH)
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden[:, self.crop_start :].to(self.dtype), mask[:, self.crop_start :].long()

    @torch.inference_mode()
    def _encode_byt5(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import HunyuanVideo15Pipeline

        embeds, mask = HunyuanVideo15Pipeline._get_byt5_prompt_embeds(
            tokenizer=self.byt5_tokenizer,
            text_encoder=self.byt5_encoder,
            prompt=prompt,
            device=next(self.byt5_encoder.parameters()).device,
            tokenizer_max_length=BYT5_MAX_LENGTH,
        )
        return embeds.to(self.dtype), mask.long()

    def encode_prompt(self, prompt: str) -> PromptEmbeddings:
        """Qwen + byT5 embeddings of ``prompt``; the last ``cache_size`` results are cached by prompt.

        A cache hit returns the very same :class:`PromptEmbeddings` object (treat it as read-only).
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        with self._lock:
            hit = self._cache.get(prompt)
            if hit is not None:
                self._cache.move_to_end(prompt)
                return hit
            text, text_mask = self._encode_text(prompt)
            byt5, byt5_mask = self._encode_byt5(prompt)
            result = PromptEmbeddings(text=text, text_mask=text_mask, byt5=byt5, byt5_mask=byt5_mask)
            self.encode_count += 1
            if self.cache_size > 0:
                self._cache[prompt] = result
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return result

    # -- image --

    @torch.inference_mode()
    def vision_shape(self) -> tuple[int, int]:
        """(tokens, width) of :meth:`encode_image`'s embedding, from the loaded SigLIP's config: one token
        per patch, ``(image_size // patch_size) ** 2`` (729 = 27 x 27 at full size; SigLIP has no class
        token), each ``hidden_size`` wide (1152). A world state's embedding must have exactly this shape."""
        config = self.image_encoder.config
        return (int(config.image_size) // int(config.patch_size)) ** 2, int(config.hidden_size)

    def encode_image(self, image: Image.Image, width: int | None = None, height: int | None = None) -> torch.Tensor:
        """SigLIP ``last_hidden_state`` [1, tokens, vision_dim] (729 x 1152 at full size) in ``dtype``.

        Upstream encodes the image *after* cropping it to the generation bucket: pass the bucket's
        ``width``/``height`` (or an image already cropped by :func:`resize_and_center_crop`).
        """
        image = _as_rgb(image)
        if width is not None and height is not None:
            image = resize_and_center_crop(image, width, height)
        pixels = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        encoder_dtype = next(self.image_encoder.parameters()).dtype
        pixels = pixels.to(device=next(self.image_encoder.parameters()).device, dtype=encoder_dtype)
        return self.image_encoder(pixel_values=pixels).last_hidden_state.to(self.dtype)


# --- images ------------------------------------------------------------------------------------------


def _as_rgb(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ImageError(f"expected a PIL image, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(source: Union[bytes, bytearray, str, Path, Image.Image], *, max_pixels: int = MAX_IMAGE_PIXELS
               ) -> Image.Image:
    """Decode an image (bytes, path or PIL image) into a fully loaded RGB PIL image.

    EXIF orientation is applied (upstream does not; a phone photo would otherwise arrive sideways).
    Raises :class:`ImageError` when the data is not a readable image or has more than ``max_pixels``.
    """
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(bytes(source)))
        elif isinstance(source, (str, Path)):
            image = Image.open(source)
        else:
            raise ImageError(f"unsupported image source {type(source).__name__}")
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageError(f"image has an empty size {width}x{height}")
        if width * height > max_pixels:
            raise ImageError(f"image is {width}x{height}; at most {max_pixels} pixels are accepted")
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")  # forces the full decode: truncated data fails here
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot read the image: {exc}") from exc


def bucket_sizes(base_size: int = BUCKET_BASE_SIZE, stride: int = BUCKET_STRIDE) -> list[tuple[int, int]]:
    """Upstream's resolution buckets as (height, width) pairs (same area, many aspect ratios)."""
    from diffusers.pipelines.hunyuan_video1_5.image_processor import generate_crop_size_list

    return [tuple(hw) for hw in generate_crop_size_list(base_size, stride)]


def select_bucket(width: int, height: int, base_size: int = BUCKET_BASE_SIZE) -> tuple[int, int]:
    """(W, H) of the bucket whose aspect ratio is nearest to ``width``x``height`` (upstream's rule).

    480p: 16:9 -> 848x480, 9:16 -> 480x848, 1:1 -> 640x640, 4:3 -> 720x544, 2:1 -> 896x448.
    """
    if width <= 0 or height <= 0:
        raise ImageError(f"invalid image size {width}x{height}")
    buckets = bucket_sizes(base_size)
    ratios = np.array([round(h / w, 5) for h, w in buckets])
    best = int(np.abs(ratios - height / width).argmin())  # first minimum, like numpy argmin upstream
    h, w = buckets[best]
    return w, h


def resize_and_center_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale (Lanczos) so the image covers ``width``x``height``, then crop the centre (upstream's rule)."""
    image = _as_rgb(image)
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    new_w, new_h = int(round(image.width * scale)), int(round(image.height * scale))
    resized = image.resize((new_w, new_h), Image.LANCZOS)
    left, top = int(round((new_w - width) / 2)), int(round((new_h - height) / 2))
    return resized.crop((left, top, left + width, top + height))


def prepare_image(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """The VAE input: the cropped image as float32 [1, 3, 1, H, W] in [-1, 1]."""
    cropped = resize_and_center_crop(image, width, height)
    array = torch.from_numpy(np.asarray(cropped, dtype=np.float32).copy())  # H, W, 3 in 0..255
    tensor = array.permute(2, 0, 1) / 255.0 * 2.0 - 1.0
    return tensor[None, :, None]


# --- VAE ---------------------------------------------------------------------------------------------

def load_vae(root: Path, device: Device = "cpu", dtype: torch.dtype = torch.bfloat16) -> "AutoencoderKLHunyuanVideo15":
    """The HunyuanVideo-1.5 VAE (32 latent channels, 4x temporal, 16x spatial) in ``dtype``."""
    from diffusers import AutoencoderKLHunyuanVideo15

    _require(Path(root), "vae")
    vae = AutoencoderKLHunyuanVideo15.from_pretrained(Path(root) / "vae", torch_dtype=dtype)
    return vae.eval().requires_grad_(False).to(device)


def latent_frames(num_frames: int, temporal_ratio: int = 4) -> int:
    """Latent frames of a video of ``num_frames`` frames (``(T - 1) / 4 + 1``)."""
    return (num_frames - 1) // temporal_ratio + 1


def video_frames(num_latents: int, temporal_ratio: int = 4) -> int:
    """Video frames decoded from ``num_latents`` latent frames (``4 (n - 1) + 1``)."""
    return temporal_ratio * (num_latents - 1) + 1


@torch.inference_mode()
def encode_condition_latents(vae: "AutoencoderKLHunyuanVideo15", image_tensor: torch.Tensor) -> torch.Tensor:
    """Normalised latents of the first frame, [1, 32, 1, H/16, W/16], in the VAE's dtype.

    ``mode()`` of the posterior times ``scaling_factor``, as upstream (one frame: never tiled).
    """
    param = next(vae.parameters())
    latents = vae.encode(image_tensor.to(device=param.device, dtype=param.dtype)).latent_dist.mode()
    return latents * vae.config.scaling_factor


@torch.inference_mode()
def decode_latents(
    vae: "AutoencoderKLHunyuanVideo15", latents: torch.Tensor, *, latents_per_step: int = DEFAULT_LATENTS_PER_STEP
) -> torch.Tensor:
    """Video [B, 3, 4 (T - 1) + 1, 16 h, 16 w] as float32 in [0, 1] from normalised latents.

    The whole video, decoded a few latents at a time by :class:`CausalVAEDecoder` with upstream
    HY-WorldPlay's semantics (bounded memory, no spatial tiles).
    """
    return CausalVAEDecoder(vae, latents_per_step=latents_per_step).decode(latents)


def frames_to_uint8(video: torch.Tensor) -> np.ndarray:
    """[1, 3, T, H, W] in [0, 1] -> uint8 [T, H, W, 3] (truncating, like upstream's writer)."""
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise ValueError(f"expected one video, got a batch of {video.shape[0]}")
        video = video[0]
    frames = (video.float() * 255).clamp(0, 255).to(torch.uint8)
    return frames.permute(1, 2, 3, 0).contiguous().cpu().numpy()


# --- scheduler ---------------------------------------------------------------------------------------


def load_scheduler(root: Path, shift: float = 5.0) -> "FlowMatchEulerDiscreteScheduler":
    """Flow-matching Euler scheduler from ``root/scheduler`` with upstream's static ``shift``.

    Options that would change upstream's sigma schedule are switched off whatever the config says.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    _require(Path(root), "scheduler")
    config = FlowMatchEulerDiscreteScheduler.load_config(Path(root) / "scheduler")
    return FlowMatchEulerDiscreteScheduler.from_config(
        config,
        shift=shift,
        use_dynamic_shifting=False,
        shift_terminal=None,
        use_karras_sigmas=False,
        use_exponential_sigmas=False,
        use_beta_sigmas=False,
        invert_sigmas=False,
        stochastic_sampling=False,
    )


def set_timesteps(
    scheduler: "FlowMatchEulerDiscreteScheduler", num_inference_steps: int, device: Device | None = None
) -> torch.Tensor:
    """Set upstream's schedule on ``scheduler`` and return its timesteps (``1000 * sigma``).

    ``scheduler.sigmas`` then holds the ``num_inference_steps`` shifted sigmas plus a final 0, and
    ``scheduler.step`` computes ``x + (sigma_next - sigma) * v``. Call again to restart (e.g. per AR chunk).
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
    scheduler.set_timesteps(sigmas=sigmas, device=device)
    return scheduler.timesteps


__all__ = [
    "BYT5_MAX_LENGTH",
    "ConditionEncoders",
    "PromptEmbeddings",
    "SYSTEM_MESSAGE",
    "TEXT_MAX_LENGTH",
    "bucket_sizes",
    "decode_latents",
    "encode_condition_latents",
    "find_crop_start",
    "frames_to_uint8",
    "latent_frames",
    "load_image",
    "load_scheduler",
    "load_vae",
    "prepare_image",
    "resize_and_center_crop",
    "select_bucket",
    "set_timesteps",
    "video_frames",
]
