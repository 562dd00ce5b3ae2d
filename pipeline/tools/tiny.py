"""Tiny random-weight models in the exact on-disk layouts of the real model repositories.

:func:`write_tiny_models` writes, under ``root``::

    HunyuanVideo-1.5-480p_i2v/            diffusers layout of hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v
        model_index.json                  (no transformer/ folder: the WorldPlay checkpoint replaces it)
        text_encoder/  tokenizer/         Qwen2.5-VL text model + a small byte-level BPE Qwen2 tokenizer
        text_encoder_2/ tokenizer_2/      T5 encoder (byT5 / Glyph) + ByT5Tokenizer
        image_encoder/ feature_extractor/ SigLIP vision model + SigLIP image processor config
        vae/ scheduler/ guider/
    HY-WorldPlay/
        ar_distilled_action_model/model.safetensors                  (+ config.json)   model ar_distilled
        ar_model/diffusion_pytorch_model.safetensors                 (+ config.json)   model ar
        ar_rl_model/diffusion_pytorch_model.safetensors              (+ config.json)   model ar_rl
        bidirectional_model/diffusion_pytorch_model.safetensors      (+ config.json)   model bidirectional

    HunyuanVideo-1.5/                     with ``sr=True``: the 720p super-resolution stage of tencent/HunyuanVideo-1.5
        transformer/720p_sr_distilled/    config.json (upstream's keys) + diffusion_pytorch_model.safetensors
        upsampler/720p_sr_distilled/      config.json + diffusion_pytorch_model.safetensors

(only the checkpoints of the ``models`` asked for; by default ar_distilled and bidirectional)

Every component is written with its library's own ``save_pretrained``, so it loads through exactly the
code path used for the real weights (:class:`pipeline.encoders.components.ConditionEncoders`,
:func:`pipeline.encoders.components.load_vae`, :func:`pipeline.encoders.components.load_scheduler`). The widths the
transformer consumes (text, byT5 and SigLIP) are deliberately all different so that a swapped input
fails loudly; :data:`TINY_DIMS` lists them and the tiny transformer config is built from them.

The VAE keeps the real latent width (32) and compression (4x temporal, 16x spatial), so latent
shapes, bucket sizes and frame/latent counts behave exactly as at full size.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterable, Iterator

import torch

from pipeline.encoders.components import SYSTEM_MESSAGE
from pipeline.model_files.resolve import COMPONENTS_DIRNAME as COMPONENTS_DIR
from pipeline.model_files.resolve import SR_DIRNAME as SR_DIR
from pipeline.model_files.resolve import SR_FILES
from pipeline.model_files.resolve import TRANSFORMER_FILES
from pipeline.model_files.resolve import WORLDPLAY_DIRNAME as WORLDPLAY_DIR

#: model -> checkpoint path relative to the WorldPlay folder (the layout has one home: pipeline.model_files.resolve)
CHECKPOINT_FILES = {model: Path(folder) / name for model, (folder, name) in TRANSFORMER_FILES.items()}

#: model_index.json of the real diffusers repo (its classes; the version is filled in when written)
MODEL_INDEX = {
    "_class_name": "HunyuanVideo15ImageToVideoPipeline",
    "feature_extractor": ["transformers", "SiglipImageProcessor"],
    "guider": ["diffusers", "ClassifierFreeGuidance"],
    "image_encoder": ["transformers", "SiglipVisionModel"],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen2_5_VLTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "tokenizer_2": ["transformers", "ByT5Tokenizer"],
    "transformer": ["diffusers", "HunyuanVideo15Transformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLHunyuanVideo15"],
}

#: Widths of the tiny encoders; the tiny transformer's input projections must match them.
TINY_DIMS = {
    "text_dim": 32,  # Qwen2.5-VL hidden size (3584 at full size)
    "byt5_dim": 16,  # T5 d_model (1472 at full size)
    "vision_dim": 24,  # SigLIP hidden size (1152 at full size)
}
#: SigLIP input size / patch of the tiny image encoder: (32 / 8)^2 = 16 vision tokens (729 at full size).
TINY_SIGLIP_IMAGE_SIZE = 32
TINY_SIGLIP_PATCH = 8
#: The tiny VAE: 5 levels like the real one (4 spatial down/up-samples, the last two also temporal),
#: 32 latent channels. The last width must be >= 2 x 32 latent channels and a temporal downsample may
#: at most quadruple the width; those 64-wide 3D convs dominate the size, so the file is stored in bf16
#: (~5 MB).
TINY_VAE = dict(
    latent_channels=32,
    block_out_channels=(8, 8, 16, 32, 64),
    layers_per_block=1,
    spatial_compression_ratio=16,
    temporal_compression_ratio=4,
)

# A minimal ChatML template: for plain-string messages it renders exactly what the real Qwen2.5-VL
# template renders ("<|im_start|>{role}\n{content}<|im_end|>\n" per message, then the assistant header).
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Text the tiny BPE learns its merges from. Learning the system message keeps the template short
# (115 tokens before the prompt; diffusers hard-codes 108 for the real tokenizer): upstream looks for the
# prompt start within the first 256 tokens, so a byte-by-byte template would not mirror the real one.
_BPE_CORPUS = [
    SYSTEM_MESSAGE,
    "A quiet street at dawn, the camera walks forward past shops and trees under a pale sky.",
    "A sign reads \"OPEN\" above a wooden door; the light is warm and soft.",
]


def _qwen_tokenizer():
    """A small byte-level BPE in the real Qwen2 tokenizer class, with the ChatML special tokens."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_BPE_CORPUS, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = {"<|endoftext|>": 0}
    for token, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, padding_side="right")
    chatml = [AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)]
    tok.add_special_tokens({"additional_special_tokens": chatml})
    tok.chat_template = _CHAT_TEMPLATE
    tok.model_max_length = 32768
    return tok


def _write_components(folder: Path, seed: int) -> None:
    from diffusers import AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler
    from transformers import (
        ByT5Tokenizer,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLTextModel,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
        SiglipVisionModel,
        T5Config,
        T5EncoderModel,
    )

    folder.mkdir(parents=True, exist_ok=True)

    tokenizer = _qwen_tokenizer()
    tokenizer.save_pretrained(folder / "tokenizer")
    torch.manual_seed(seed)
    qwen = Qwen2_5_VLTextModel(
        Qwen2_5_VLTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TINY_DIMS["text_dim"],
            intermediate_size=64,
            num_hidden_layers=4,  # the encoder reads layer -3, so keep a few
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            rope_scaling={"mrope_section": [2, 3, 3], "rope_type": "default"},
            bos_token_id=None,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    qwen.save_pretrained(folder / "text_encoder")

    byt5_tokenizer = ByT5Tokenizer()
    byt5_tokenizer.save_pretrained(folder / "tokenizer_2")
    torch.manual_seed(seed + 1)
    T5EncoderModel(
        T5Config(
            vocab_size=len(byt5_tokenizer),
            d_model=TINY_DIMS["byt5_dim"],
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_heads=2,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=True,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    ).eval().save_pretrained(folder / "text_encoder_2")

    torch.manual_seed(seed + 2)
    SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=TINY_DIMS["vision_dim"],
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=TINY_SIGLIP_IMAGE_SIZE,
            patch_size=TINY_SIGLIP_PATCH,
        )
    ).eval().save_pretrained(folder / "image_encoder")
    SiglipImageProcessorPil(
        size={"height": TINY_SIGLIP_IMAGE_SIZE, "width": TINY_SIGLIP_IMAGE_SIZE},
        resample=3,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(folder / "feature_extractor")

    torch.manual_seed(seed + 3)
    AutoencoderKLHunyuanVideo15(**TINY_VAE).eval().to(torch.bfloat16).save_pretrained(folder / "vae")

    FlowMatchEulerDiscreteScheduler(shift=5.0).save_pretrained(folder / "scheduler")
    ClassifierFreeGuidance(guidance_scale=6.0).save_pretrained(folder / "guider")

    model_index = {**MODEL_INDEX, "_diffusers_version": _diffusers_version()}
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _write_transformers(folder: Path, models: Iterable[str], seed: int) -> None:
    from pipeline.dit.checkpoint import write_random_checkpoint
    from pipeline.dit.config import WorldPlayConfig

    config = WorldPlayConfig.tiny(**TINY_DIMS)
    for i, model in enumerate(models):
        path = folder / CHECKPOINT_FILES[model]
        write_random_checkpoint(path, config, seed=seed + 100 + i)  # also writes config.json beside it


def _write_sr(folder: Path, seed: int) -> None:
    """The SR transformer (the tiny 480p widths, 98 input channels, meanflow) and the latent upsampler."""
    from pipeline.dit.config import WorldPlayConfig
    from pipeline.sr.transformer import SRConfig, write_random_sr_transformer
    from pipeline.sr.upsampler import LatentUpsampler

    config = SRConfig(base=WorldPlayConfig.tiny(**TINY_DIMS), in_channels=98, use_meanflow=True)
    write_random_sr_transformer((folder / SR_FILES["transformer"]).parent, config, seed=seed + 200)
    torch.manual_seed(seed + 201)
    LatentUpsampler(32, 32, hidden_channels=16, num_blocks=2, global_residual=True).save_folder(
        (folder / SR_FILES["upsampler"]).parent)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' progress bars and notices while writing (they are not errors)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    levels = (diffusers_logging.get_verbosity(), hf_logging.get_verbosity())
    bars = hf_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        hf_logging.set_verbosity(levels[1])
        if bars:
            hf_logging.enable_progress_bar()


#: widths of the tiny fast decoder (TAEHV layout; the published ones are (256, 128, 64, 64))
TINY_FAST_DECODER_WIDTHS = (16, 8, 8, 8)


def random_fast_decoder(config=None, *, seed: int = 0):
    """A TAEHV decoder (:class:`pipeline.encoders.fast_decode.TAEHVDecoder`, default: the published base
    size) with seeded random weights, fan-in scaled so activations stay O(1) and frames are not saturated;
    on the CPU, in fp32, the global RNG state untouched."""
    from pipeline.encoders.fast_decode import TAEHVDecoder, TAEHVDecoderConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TAEHVDecoder(config if config is not None else TAEHVDecoderConfig())
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0, (1.0 / param[0].numel()) ** 0.5 if param.ndim > 1 else 0.02)
    return model.eval().requires_grad_(False)


def write_tiny_fast_decoder(path: Path, *, seed: int = 0, variant: str = "base",
                            widths: tuple[int, int, int, int] = TINY_FAST_DECODER_WIDTHS) -> Path:
    """A random-weight TAEHV decoder file in the published key layout (``decoder.*`` tensors only; the
    loader never reads the encoder half), at tiny widths, 32 latent channels and patch size 2."""
    from safetensors.torch import save_file

    from pipeline.encoders.fast_decode import TAEHVDecoderConfig

    model = random_fast_decoder(TAEHVDecoderConfig(widths=widths, variant=variant), seed=seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def write_tiny_models(
    root: Path, *, models: Iterable[str] = ("ar_distilled", "bidirectional"), seed: int = 0, sr: bool = False,
    fast_decoder: bool = False,
) -> Path:
    """Write every tiny component under ``root`` (see the module docstring) and return ``root``; with
    `fast_decoder`, also ``root/TAEHV/taehv1_5.safetensors`` (:func:`write_tiny_fast_decoder`).

    Deterministic for a given ``seed``; the global torch RNG state is restored afterwards.
    """
    models = tuple(models)
    unknown = [m for m in models if m not in CHECKPOINT_FILES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; expected some of {sorted(CHECKPOINT_FILES)}")
    root = Path(root)
    with torch.random.fork_rng(devices=[]), _quiet():
        _write_components(root / COMPONENTS_DIR, seed)
        _write_transformers(root / WORLDPLAY_DIR, models, seed)
        if sr:
            _write_sr(root / SR_DIR, seed)
    if fast_decoder:
        from pipeline.model_files.fast_decoder import DEFAULT_FILE, FAST_DECODER_DIRNAME

        write_tiny_fast_decoder(root / FAST_DECODER_DIRNAME / DEFAULT_FILE, seed=seed)
    return root


__all__ = [
    "CHECKPOINT_FILES",
    "COMPONENTS_DIR",
    "SR_DIR",
    "TINY_DIMS",
    "TINY_SIGLIP_IMAGE_SIZE",
    "TINY_SIGLIP_PATCH",
    "TINY_FAST_DECODER_WIDTHS",
    "TINY_VAE",
    "WORLDPLAY_DIR",
    "write_tiny_fast_decoder",
    "write_tiny_models",
]
