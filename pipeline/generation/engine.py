"""WorldPlayPipeline: everything loaded once per worker; one call renders one video.

``generate`` runs: constraint checks (before any heavy work) -> image bucket + VAE condition latent ->
prompt / image encoding (encoders then leave the GPU when memory is tight) -> AR or bidirectional
rollout on the resident DiT, each finished chunk decoded by the causal VAE decoder at once -> uint8 frames
(handed over chunk by chunk through ``on_frames``, and returned whole).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from PIL import Image

from pipeline.checkpoints import CHECKPOINTS, MODE_ALIASES, ROLLOUTS, rollout_of
from pipeline.dit.attention import prepare as prepare_attention
from pipeline.dit.checkpoint import load_transformer
from pipeline.dit.transformer import WorldPlayTransformer, disable_compile, enable_compile
from pipeline.encoders import components as comp
from pipeline.encoders.causal_decode import CausalVAEDecoder
from pipeline.encoders.fast_decode import FastVideoDecoder
from pipeline.errors import (
    GenerationCancelled,
    ImageError,
    ModelUnavailableError,
    PipelineError,
    RankZeroFailedError,
    SessionTooLongError,
    StateMismatchError,
)
from pipeline.generation.camera import CameraTrajectory, check_latent_count, parse_pose
from pipeline.generation.rollout import (
    AR_CHUNK_LATENTS,
    BIDIRECTIONAL_CHUNK_LATENTS,
    Conditioning,
    Progress,
    Trace,
)
from pipeline.generation.world import World, slice_trajectory
from pipeline.generation.world_state import SessionLimits, WorldState, checkpoint_fingerprint
from pipeline.limits import MAX_SESSION_LATENTS
from pipeline.settings import env_flag

logger = logging.getLogger("worldplay.engine")

Mode = Literal["ar", "bidirectional"]
MODES: tuple[str, ...] = ROLLOUTS  # the rollouts; a model (pipeline.checkpoints) runs one of them
#: model -> its published default steps and guidance (pipeline.checkpoints)
DEFAULTS = {name: {"steps": c.steps, "guidance": c.guidance} for name, c in CHECKPOINTS.items()}
FPS = 24
CHUNK_LATENTS = {"ar": AR_CHUNK_LATENTS, "bidirectional": BIDIRECTIONAL_CHUNK_LATENTS}
RESOLUTIONS: tuple[str, ...] = ("480p", "720p")
#: "full": the HunyuanVideo-1.5 VAE (causal_decode); "fast": the TAEHV tiny decoder (fast_decode)
DECODERS: tuple[str, ...] = ("full", "fast")


@dataclass
class GenerationRequest:
    """One video. With ``history`` (a world session, :mod:`pipeline.generation.world_state`) ``camera`` holds only
    the new latents' cameras, ``image`` is None (the state carries the image's latent and embedding)
    and the rollout resumes after the state's latents.

    ``model`` names the checkpoint (:mod:`pipeline.checkpoints`); ``mode`` is then its rollout. Given alone,
    ``mode`` picks the model it has always meant ("ar": ar_distilled, "bidirectional": bidirectional)."""

    prompt: str
    image: Image.Image | None
    camera: CameraTrajectory
    mode: Mode | None = None
    negative_prompt: str = ""
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    history: WorldState | None = None
    model: str | None = None
    #: "480p", or "720p": the super-resolution stage (pipeline.sr) after the rollout; the state stays 480p
    resolution: str = "480p"
    #: "full" (the VAE) or "fast" (the TAEHV tiny decoder, when loaded): decodes every frame of the request
    decoder: str = "full"

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise PipelineError(f"resolution {self.resolution!r} is unknown; expected one of {', '.join(RESOLUTIONS)}")
        if self.model is None:
            if self.mode is not None and self.mode not in MODE_ALIASES:
                raise PipelineError(f"mode {self.mode!r} is unknown; expected ar or bidirectional")
            self.model = MODE_ALIASES[self.mode or "ar"]
        elif self.model not in CHECKPOINTS:
            raise PipelineError(f"model {self.model!r} is unknown; expected one of {', '.join(CHECKPOINTS)}")
        elif self.mode is not None and self.mode != rollout_of(self.model):
            raise PipelineError(f"model {self.model} rolls out {rollout_of(self.model)}, not {self.mode}")
        self.mode = rollout_of(self.model)  # type: ignore[assignment]

    @property
    def steps(self) -> int:
        return int(self.num_inference_steps or DEFAULTS[self.model]["steps"])

    @property
    def guidance(self) -> float:
        value = self.guidance_scale
        return float(DEFAULTS[self.model]["guidance"] if value is None else value)


@dataclass
class GenerationResult:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    width: int
    height: int
    num_frames: int
    seed: int
    mode: str
    num_inference_steps: int
    guidance_scale: float
    timings: dict[str, float] = field(default_factory=dict)
    state: WorldState | None = None  # the whole session after this video (history + new latents)
    model: str = ""


@dataclass
class FollowerResult:
    """What :meth:`WorldPlayPipeline.generate` returns on a sequence-parallel follower rank: the clean
    latents (rank 0's, [T, C, h, w] like :attr:`WorldState.latents`); the frames and the state are rank 0's."""

    latents: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)


def _share_inputs(sp, tensors: list[torch.Tensor] | None, device: torch.device | None = None) -> list[torch.Tensor]:
    """Rank 0's DiT inputs on every rank: rank 0 passes its `tensors`, a follower None. Their shapes and
    dtypes go first (a small pickled header), so a follower, which encodes nothing, can receive them."""
    header = sp.share([(tuple(t.shape), t.dtype) for t in tensors] if tensors is not None else None)
    if isinstance(header, tuple):  # ("failed", why): rank 0 could not prepare them
        raise RankZeroFailedError(f"rank 0 failed before the rollout: {header[1]}")
    if tensors is None:
        tensors = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in header]
    sp.broadcast(tensors)
    return tensors


class _Timer:
    """Seconds per stage. A stage opened inside another is not counted in the outer one (the chunk
    decodes run inside the rollout, yet "denoise" stays the denoising time)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.timings: dict[str, float] = {}
        self._nested: list[float] = []  # per open stage: seconds spent in stages opened inside it

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        started = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            self._sync()
            elapsed = time.perf_counter() - started
            inner = self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed
            self.timings[name] = round(self.timings.get(name, 0.0) + elapsed - inner, 4)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class WorldPlayPipeline:
    def __init__(
        self,
        *,
        transformers: dict[str, WorldPlayTransformer],
        encoders: "comp.ConditionEncoders | None",
        vae,
        scheduler,
        device: torch.device,
        dtype: torch.dtype,
        offload_encoders: bool,
        load_info: dict | None = None,
        checkpoint_ids: dict[str, str] | None = None,
        sr=None,
        fast_decoder=None,
        fast_decoder_info: dict | None = None,
    ):
        self.transformers = transformers
        self.sr = sr  # pipeline.sr.stage.SRStage (resolution "720p"), or None
        # the TAEHV tiny decoder (pipeline.encoders.fast_decode.TAEHVDecoder) or None; the info says which
        # file it is, or why there is none (health: fast_decoder / fast_decoder_missing)
        self.fast_decoder = fast_decoder
        self.fast_decoder_info = dict(fast_decoder_info or {})
        self.encoders = encoders
        self.vae = vae
        self.scheduler = scheduler
        self.device = device
        self.dtype = dtype
        self.offload_encoders = offload_encoders
        # The CPU kernels' thread count decides how their reductions split, so the bits of a CPU run. A
        # world may be stepped from any thread (the live server's GPU thread), and a thread keeps the
        # count it first ran with: every step runs with this one (World.step), so a world gives the same
        # latents whichever thread steps it.
        self.cpu_threads = torch.get_num_threads()
        self.load_info = load_info or {}
        # what a world state records to refuse continuing on another checkpoint
        self.checkpoint_ids = dict(checkpoint_ids or {})
        for model, transformer in transformers.items():
            self.checkpoint_ids.setdefault(model, _config_fingerprint(transformer))
        self.compiled = env_flag("WORLDPLAY_COMPILE", False) and _compile_with_cache()
        # Decode each chunk while later ones denoise (default), or all of them after the rollout, when
        # the DiT's K/V cache is gone: the decoder's carried state (~2.8 GB at 832x480 in bf16) and one
        # pass's activations (~3 GB) then never sit beside the cache. Same frames either way. A decode
        # that runs out of memory beside the cache switches this off for the worker (ChunkFrames).
        self.decode_during_denoise = env_flag("WORLDPLAY_DECODE_DURING_DENOISE", True)
        self._text_encoder_host: HostResident | None = None
        self.sequence_parallel = None  # pipeline.dit.parallel.SequenceParallel with several ranks
        placed = time.perf_counter()
        if encoders is None:
            pass  # a follower rank (dit_only): rank 0 encodes, decodes and broadcasts the DiT's inputs
        elif offload_encoders:
            # byT5 and SigLIP are small (~2 GB): they stay on the GPU. The Qwen text encoder (~15 GB)
            # lives in pinned host memory and visits the GPU only when a prompt misses the cache.
            for module in (encoders.byt5_encoder, encoders.image_encoder):
                module.to(device)
            self._text_encoder_host = HostResident(encoders.text_encoder, device)
        else:
            encoders.to(device)
        self.load_info.setdefault("load_seconds", {})["encoders_to_device"] = round(time.perf_counter() - placed, 3)
        started = time.perf_counter()
        config = next(iter(transformers.values())).config
        self.load_info["attention"] = prepare_attention(device, dtype, config.num_heads, config.head_dim)
        self.load_info["load_seconds"]["attention_kernel"] = round(time.perf_counter() - started, 3)

    # ------------------------------------------------------------------------------ loading

    @classmethod
    def from_paths(
        cls,
        paths,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        models: tuple[str, ...] | None = None,
        dit_only: bool = False,
    ) -> "WorldPlayPipeline":
        """Load every component from a resolved :class:`pipeline.model_files.resolve.ModelPaths`; of its
        checkpoints, only `models` (default: every one resolved).

        `dit_only`: the transformers and the scheduler, without the text/image encoders and the VAE
        (``encoders`` and ``vae`` are None): a sequence-parallel follower rank, which receives its
        inputs from rank 0 (:meth:`use_sequence_parallel`) and only denoises."""
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or default_dtype(device)
        models = tuple(models or paths.transformer.keys())
        missing = [m for m in models if m not in paths.transformer]
        if missing:
            raise PipelineError(f"no transformer checkpoint resolved for model(s) {missing}")
        timings: dict[str, float] = {}
        started = time.perf_counter()
        transformers = {}
        for model in models:
            t0 = time.perf_counter()
            transformers[model] = load_transformer(paths.transformer[model], device=device, dtype=dtype)
            timings[f"transformer_{model}"] = round(time.perf_counter() - t0, 3)
        offload = should_offload_encoders(device)
        encoders = vae = None
        if not dit_only:
            t0 = time.perf_counter()
            encoders = comp.ConditionEncoders.from_pretrained(paths.components, device="cpu", dtype=dtype)
            timings["encoders"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        if not dit_only:
            vae = comp.load_vae(paths.components, device=device, dtype=dtype)
        scheduler = comp.load_scheduler(paths.components)
        timings["vae_scheduler"] = round(time.perf_counter() - t0, 3)
        sr = None
        if getattr(paths, "sr", None) is not None and not dit_only:  # the SR stage runs on rank 0 alone
            from pipeline.sr.stage import SRStage

            t0 = time.perf_counter()
            files = paths.sr_files
            sr = SRStage.from_folders(files["transformer"].parent, files["upsampler"].parent, device=device,
                                      dtype=dtype)
            timings["sr"] = round(time.perf_counter() - t0, 3)
        fast = fast_info = None
        if not dit_only:
            t0 = time.perf_counter()
            fast, fast_info = load_fast_decoder_for(paths, device, dtype)
            timings["fast_decoder"] = round(time.perf_counter() - t0, 3)
        timings["total"] = round(time.perf_counter() - started, 3)
        checkpoint_ids = {model: checkpoint_fingerprint(paths.transformer[model]) for model in models}
        info = {
            "load_seconds": timings,
            "sources": dict(getattr(paths, "sources", {}) or {}),
            "resolve_seconds": dict(getattr(paths, "timings", {}) or {}),
        }
        logger.info("pipeline ready on %s (%s), models %s, load %s", device, dtype, models, timings)
        return cls(
            transformers=transformers,
            encoders=encoders,
            vae=vae,
            scheduler=scheduler,
            device=device,
            dtype=dtype,
            offload_encoders=offload,
            load_info=info,
            checkpoint_ids=checkpoint_ids,
            sr=sr,
            fast_decoder=fast,
            fast_decoder_info=fast_info,
        )

    @property
    def models(self) -> tuple[str, ...]:
        """The checkpoints loaded, by model name."""
        return tuple(self.transformers)

    @property
    def resolutions(self) -> tuple[str, ...]:
        """The output resolutions this pipeline renders ("720p" with the SR stage loaded)."""
        return RESOLUTIONS if self.sr is not None else RESOLUTIONS[:1]

    @property
    def modes(self) -> tuple[str, ...]:
        """The rollouts the loaded models run."""
        return tuple(dict.fromkeys(rollout_of(m) for m in self.transformers))

    def use_sequence_parallel(self, sp) -> None:
        """Split every DiT pass across the ranks of `sp` (:class:`pipeline.dit.parallel.SequenceParallel`).

        Every rank then runs :meth:`generate` on the same request at the same time. Only rank 0 encodes
        (image latent, prompts, image embedding) and decodes: it broadcasts the DiT's inputs (noise,
        condition latents, encoder outputs; their shapes first), and the followers only denoise, so a
        follower needs no encoders nor VAE (``from_paths(..., dit_only=True)``)."""
        from pipeline.dit.parallel import check_heads

        for transformer in self.transformers.values():
            check_heads(sp.world, transformer.config.num_heads)
            transformer.sequence_parallel = sp
        self.sequence_parallel = sp
        if sp.rank == 0 and (self.encoders is None or self.vae is None):
            raise PipelineError("rank 0 of a sequence-parallel group needs the encoders and the VAE")
        self.load_info["sequence_parallel"] = {"world_size": sp.world, "rank": sp.rank, "backend": sp.backend}

    def health(self) -> dict:
        import diffusers
        import transformers as hf_transformers

        info = {
            "models": list(self.models),
            "modes": list(self.modes),
            "resolutions": list(self.resolutions),
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "offload_encoders": self.offload_encoders,
            "compiled": self.compiled,
            "decode_during_denoise": self.decode_during_denoise,
            "fast_decoder": self.fast_decoder_info.get("file") if self.fast_decoder is not None else None,
            "fast_decoder_missing": None if self.fast_decoder is not None else self.fast_decoder_info.get(
                "reason", "not loaded"),
            "live_decoder": self.live_decoder(),
            "sequence_parallel": {"world_size": 1},
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": hf_transformers.__version__,
            },
            **self.load_info,
        }
        if self.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
            info["gpu_memory_allocated_gb"] = round(torch.cuda.memory_allocated(self.device) / 1e9, 2)
        return info

    def warm_up(self) -> dict[str, float]:
        """One short generation per loaded model on a synthetic picture, before the first job.

        With ``WORLDPLAY_COMPILE=1`` this is where the blocks compile (otherwise the first job pays
        for it); it also initialises the GPU libraries' kernels and plans. AR renders 45 frames at one
        step per chunk (three chunks: the text pass, chunk steps, and context passes of two sizes, after
        which torch.compile's graphs take any size), bidirectional one step of its first 16-latent chunk
        with guidance, both at the production 832x480 bucket. If the compiled blocks fail here, the
        worker goes on with the eager ones rather than failing every job. Returns seconds per model,
        also kept in the health report (``warm_up_seconds``).
        """
        ys, xs = np.mgrid[0:480, 0:832]
        picture = Image.fromarray(np.stack([xs % 256, ys % 256, (xs + ys) % 256], -1).astype(np.uint8))
        poses = {"ar": "w-11", "bidirectional": "w-15"}  # 12 latents: 3 AR chunks; 16: one bidirectional chunk
        seconds: dict[str, float] = {}
        for model in self.models:
            request = GenerationRequest(
                prompt="warm-up", image=picture, camera=parse_pose(poses[rollout_of(model)]), model=model,
                num_inference_steps=1, negative_prompt="",
            )
            started = time.perf_counter()
            try:
                self.generate(request)
            except Exception:
                if not self.compiled:
                    raise
                logger.exception("warm-up with compiled blocks failed; going on with the eager blocks")
                disable_compile()
                self.compiled = False
                self.generate(request)
            seconds[model] = round(time.perf_counter() - started, 3)
            logger.info("warm-up %s: %.1f s%s", model, seconds[model], " (compiled blocks)" if self.compiled else "")
        self.load_info["warm_up_seconds"] = seconds
        return seconds

    def warm_up_if_configured(self) -> dict[str, float] | None:
        """:meth:`warm_up` when ``WORLDPLAY_WARMUP`` says so (default: only with compiled blocks).

        A warm-up is an optimisation: if it fails, the error is logged and kept in the health report
        (``warm_up_error``) and the worker still takes jobs, which report their own errors.
        """
        if not env_flag("WORLDPLAY_WARMUP", self.compiled):
            return None
        try:
            return self.warm_up()
        except Exception as exc:  # noqa: BLE001
            logger.exception("warm-up failed; the worker takes jobs without it")
            self.load_info["warm_up_error"] = f"{type(exc).__name__}: {exc}"[:500]
            return None

    # ---------------------------------------------------------------------------- generation

    def validate(self, request: GenerationRequest) -> None:
        """Every cheap check, before any heavy work."""
        if request.model not in self.transformers:
            raise ModelUnavailableError(f"model {request.model!r} is not loaded on this worker "
                                        f"(loaded: {', '.join(self.models)})")
        if request.history is None:
            check_latent_count(request.camera.num_latents, request.mode)
        else:
            self._validate_continuation(request)
        if request.steps < 1:
            raise PipelineError("num_inference_steps must be at least 1")
        if request.resolution != "480p":
            from pipeline.sr.upsampler import check_sr_frames

            follower = self.sequence_parallel is not None and self.sequence_parallel.rank > 0
            if self.sr is None and not follower:  # a follower only denoises the 480p rollout
                raise ModelUnavailableError(f"resolution {request.resolution!r} needs the super-resolution stage, "
                                            "which this worker did not load (start it with WORLDPLAY_SR=1)")
            if request.history is not None:
                raise PipelineError(f"resolution {request.resolution!r} is for new worlds; a continuation renders "
                                    "480p")
            check_sr_frames(request.camera.num_frames)
        self.check_decoder(request.decoder)

    def check_decoder(self, decoder: str) -> None:
        """`decoder` is one this pipeline can decode with: ModelUnavailableError for "fast" without its weights."""
        if decoder not in DECODERS:
            raise PipelineError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if decoder == "fast" and self.fast_decoder is None:
            raise ModelUnavailableError(
                "decoder 'fast' needs the fast decoder's weights, which this worker does not have ("
                f"{self.fast_decoder_info.get('reason', 'not loaded')}); send decoder 'full'")

    def live_decoder(self) -> str:
        """The decoder a live world uses unless told otherwise: ``WORLDPLAY_LIVE_DECODER`` (``fast``, the
        default, when the fast decoder is loaded; ``full``)."""
        choice = (os.environ.get("WORLDPLAY_LIVE_DECODER") or "fast").strip().lower()
        if choice not in DECODERS:
            logger.warning("WORLDPLAY_LIVE_DECODER=%r: expected fast or full; using fast when loaded", choice)
            choice = "fast"
        return "fast" if choice == "fast" and self.fast_decoder is not None else "full"

    def _fast_model(self, decoder: str):
        """The tiny decoder model when `decoder` is "fast" (validated), else None (the VAE decodes)."""
        return self.fast_decoder if decoder == "fast" else None

    def _validate_continuation(self, request: GenerationRequest) -> None:
        """A world state fits this model, this mode and the session limits; the new part is whole chunks."""
        self._check_state(request.history, request.model, new_latents=request.camera.num_latents)

    def _check_state(self, state: WorldState, model: str, *, new_latents: int) -> None:
        """A world state fits this model (checkpoint) and its rollout, `new_latents` (> 0) are whole chunks and
        stay within the session limit."""
        from pipeline.encoders.components import bucket_sizes
        from pipeline.generation.camera import check_continuation_count

        transformer = self.transformers[model]
        mode = rollout_of(model)
        if state.mode != mode:
            raise StateMismatchError(f"the world state was made in {state.mode} mode; this request is {mode}")
        if state.model != model:
            raise StateMismatchError(f"the world state was made with model {state.model}; this request asks for "
                                     f"{model} (a world continues on the checkpoint that made it)")
        if state.checkpoint != self.checkpoint_ids[model]:
            raise StateMismatchError(
                f"the world state was made with another {model} checkpoint ({state.checkpoint}); this "
                f"worker runs {self.checkpoint_ids[model]}"
            )
        channels, h, w = state.latents.shape[1:]
        buckets = bucket_sizes(transformer.config.resolution_base)
        if channels != transformer.config.latent_channels or (state.height, state.width) not in buckets:
            raise StateMismatchError(
                f"the world state is {state.width}x{state.height} with {channels} latent channels, a size this "
                f"model does not generate"
            )
        # the embedding's width must fit the transformer and its token count the loaded image encoder: a
        # crafted state could otherwise inflate the conditioning and the AR cache until the GPU runs out
        expected = self.encoders.vision_shape() if self.encoders is not None else None
        if state.vision.shape[1] != transformer.config.vision_dim or (
                expected is not None and tuple(state.vision.shape) != expected):
            want = f" (this model's image encoder makes {list(expected)})" if expected is not None else ""
            raise StateMismatchError(f"the world state's image embedding {list(state.vision.shape)} does not fit "
                                     f"this model's image encoder{want}")
        if new_latents:
            check_continuation_count(new_latents, mode)
        limits = SessionLimits.from_env()
        total = state.num_latents + new_latents
        if total > min(limits.max_latents, MAX_SESSION_LATENTS):
            raise SessionTooLongError(
                f"the session would reach {total} latents ({4 * (total - 1) + 1} frames); this worker allows at "
                f"most {min(limits.max_latents, MAX_SESSION_LATENTS)} latents per session (WORLDPLAY_MAX_SESSION_LATENTS)"
            )

    @torch.inference_mode()
    def generate(
        self,
        request: GenerationRequest,
        callback: Callable[[str, int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        *,
        on_frames: Callable[[np.ndarray], None] | None = None,
        trace: Trace | None = None,
        on_preview_frames: Callable[[np.ndarray], None] | None = None,
    ) -> GenerationResult:
        """Render one video: open a world (or resume the request's history) and step it over the camera
        path's chunks (:mod:`pipeline.generation.world`, the object a live world steps too).

        `callback(stage, step, total)` is called once per denoising step (stage "denoising") and once
        after decoding ("decoded"); `should_cancel()` is polled before every step. Each chunk is
        decoded as soon as it is clean (a causal VAE decode, :mod:`pipeline.encoders.causal_decode`, so the
        frames are final) and, with `on_frames`, its uint8 frames [n, H, W, 3] are handed over right
        away, in order, while the next chunk denoises: 13 frames for the first AR chunk, 16 after.

        With ``resolution`` "720p" the 480p latents then go through the super-resolution stage
        (:mod:`pipeline.sr.stage`) and the VAE decodes the 720p latents: `on_frames` gets those frames once, at
        the end, and `on_preview_frames` (if given) the 480p chunks as they are decoded during the rollout (the
        live preview); without it the 480p frames are never decoded. The state keeps the 480p latents.

        On a sequence-parallel follower rank (rank > 0) this only denoises rank 0's inputs and returns a
        :class:`FollowerResult`.
        """
        self.validate(request)
        timer = _Timer(self.device)
        sp = self.sequence_parallel
        follower = sp is not None and sp.rank > 0
        history = request.history
        past = history.num_latents if history is not None else 0
        chunks = None
        super_resolve = request.resolution != "480p"
        if not follower:
            if self.encoders is None or self.vae is None:
                raise PipelineError("this pipeline was loaded without encoders and VAE (a follower rank): it cannot "
                                    "generate on its own")
            if not super_resolve:
                chunks = ChunkFrames(self.vae, timer, on_frames, during_denoise=self.decode_during_denoise,
                                     history_latents=past, keep=True, fast_model=self._fast_model(request.decoder))
            elif on_preview_frames is not None:  # 480p frames for the preview only, never kept
                chunks = ChunkFrames(self.vae, timer, on_preview_frames, during_denoise=True, history_latents=past,
                                     keep=False, fallback=False, fast_model=self._fast_model(request.decoder))
        world = self._world(
            model=request.model, seed=int(request.seed), prompt=request.prompt, negative_prompt=request.negative_prompt,
            steps=request.steps, guidance=request.guidance, image=request.image, history=history, timer=timer,
            frames=chunks, follower=follower, limits=None,
        )
        world.job.trace = trace
        if sp is not None:
            should_cancel = sp.agreed(should_cancel, self.device)  # rank 0 decides; followers poll nothing
        size = world.chunk_latents
        new = request.camera.num_latents
        sr_steps = self.sr.steps if super_resolve and not follower else 0
        progress = Progress((new // size) * request.steps + sr_steps, callback if not follower else None,
                            should_cancel)
        try:
            for offset in range(0, new, size):
                world.step(slice_trajectory(request.camera, offset, offset + size), progress=progress)
            world.release_cache()  # the K/V cache goes before any chunk still waiting is decoded
            if follower:
                return FollowerResult(latents=world.job.latents[0].permute(1, 0, 2, 3).float().cpu().contiguous(),
                                      timings=timer.timings)
            if super_resolve:
                if chunks is not None:
                    chunks.decoder = None  # the 480p preview decoder's state goes before the SR stage
                frames = self._super_resolve(world, request, timer, progress)
                if on_frames is not None:
                    with timer.stage("hand_over"):
                        on_frames(frames)
            else:
                if chunks.fell_back:
                    # One out-of-memory decode beside the K/V cache is enough to know this card has no room for
                    # it: later jobs on this worker decode after their rollout straight away.
                    self.decode_during_denoise = False
                frames = chunks.finish(world.job.latents)
                num_latents = world.num_latents
                if chunks.latents_decoded != num_latents:
                    raise RuntimeError(f"decoded {chunks.latents_decoded} of {num_latents} latents")
            if callback is not None:
                callback("decoded", 1, 1)
            state = world.state()
        finally:
            world.close()
        return GenerationResult(
            frames=frames,
            width=frames.shape[2],
            height=frames.shape[1],
            num_frames=frames.shape[0],
            seed=int(request.seed),
            mode=request.mode,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            timings=timer.timings,
            state=state,
            model=request.model,
        )

    def _super_resolve(self, world: World, request: GenerationRequest, timer: "_Timer", progress: Progress
                       ) -> np.ndarray:
        """The 720p frames [T, H, W, 3] of a finished (new) world: the picture at the 720p size (VAE latent and
        SigLIP embedding), the SR stage over the world's 480p latents, and a VAE decode at 720p."""
        from pipeline.sr.stage import sr_size

        base = self.transformers[request.model].config.resolution_base
        width, height = sr_size(world.width, world.height, base)
        with timer.stage("sr_prepare_image"):
            image = _as_rgb(request.image)
            pixels = comp.prepare_image(image, width, height).to(self.device, self.dtype)
            image_latent = comp.encode_condition_latents(self.vae, pixels)
            vision = self.encoders.encode_image(image, width, height).to(self.device)
        positive = world.job.positive

        def step_done(step: int, total: int) -> None:
            progress.step()

        with timer.stage("super_resolution"):
            latents = self.sr.run(world.job.latents, image_latent, text=positive.text, text_mask=positive.text_mask,
                                  byt5=positive.byt5, byt5_mask=positive.byt5_mask, vision=vision,
                                  seed=int(request.seed), callback=step_done, should_cancel=progress.should_cancel)
        with timer.stage("decode_720p"):  # chunk by chunk, each turned into uint8 at once (bounded memory)
            fast = self._fast_model(request.decoder)
            decoder = FastVideoDecoder(fast) if fast is not None else CausalVAEDecoder(self.vae)
            step = AR_CHUNK_LATENTS
            pieces = [comp.frames_to_uint8(decoder.decode(latents[:, :, start:start + step]))
                      for start in range(0, latents.shape[2], step)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    # ---------------------------------------------------------------------------- worlds

    def open_world(self, *, prompt: str, image: Image.Image, seed: int = 0, negative_prompt: str = "",
                   num_inference_steps: int | None = None, guidance_scale: float | None = None,
                   mode: Mode | None = None, model: str | None = None, decoder: str | None = None) -> World:
        """A new world from a picture, ready to :meth:`World.step` chunk by chunk (a live world). `decoder`:
        ``"fast"`` / ``"full"``; None: :meth:`live_decoder`."""
        request = GenerationRequest(prompt=prompt, image=image, camera=None, mode=mode,  # type: ignore[arg-type]
                                    model=model,
                                    negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                                    guidance_scale=guidance_scale, seed=seed, decoder=decoder or self.live_decoder())
        return self._live_world(request)

    def resume_world(self, state: WorldState, *, prompt: str | None = None, negative_prompt: str | None = None,
                     seed: int | None = None, num_inference_steps: int | None = None,
                     guidance_scale: float | None = None, mode: Mode | None = None,
                     model: str | None = None, decoder: str | None = None) -> World:
        """The world of a saved state, ready to step on from its last latent (no decoder resume needed
        later: the decoder's state is rebuilt once, before the first new chunk)."""
        request = GenerationRequest(
            prompt=state.prompt if prompt is None else prompt, image=None, camera=None,  # type: ignore[arg-type]
            model=model or (state.model if mode in (None, state.mode) else MODE_ALIASES.get(mode, mode)),
            negative_prompt=state.negative_prompt if negative_prompt is None else negative_prompt,
            num_inference_steps=num_inference_steps or state.num_inference_steps,
            guidance_scale=state.guidance_scale if guidance_scale is None else guidance_scale,
            seed=state.seed if seed is None else seed, history=state, decoder=decoder or self.live_decoder(),
        )
        return self._live_world(request)

    @torch.inference_mode()
    def redecode(self, state: WorldState, *, decoder: str = "full",
                  on_frames: Callable[[np.ndarray], None] | None = None,
                  should_cancel: Callable[[], bool] | None = None, keep_frames: bool = True) -> GenerationResult:
        """A saved world's whole video again from its latents, no generation: with ``"full"`` the VAE's frames
        (a live world streamed with the fast decoder, at full quality), with ``"fast"`` the fast decoder's. The
        result describes the state's world (seed, model, steps); it carries no new state. With `on_frames`
        and ``keep_frames=False`` the frames are only handed over: ``result.frames`` is empty and
        ``result.num_frames`` counts them (a 1024-latent session is 4093 frames, ~5 GB at 848x480)."""
        self.check_decoder(decoder)
        if self.vae is None:
            raise PipelineError("this pipeline was loaded without a VAE (a follower rank): it cannot decode")
        self.use_cpu_threads()
        timer = _Timer(self.device)
        if not keep_frames and on_frames is None:
            raise ValueError("keep_frames=False needs on_frames: the frames would go nowhere")
        count = 0

        def hand_over(frames: np.ndarray) -> None:
            nonlocal count
            count += frames.shape[0]
            if on_frames is not None:
                on_frames(frames)

        frames = decode_state(state, self.vae, hand_over, fast_model=self._fast_model(decoder), timer=timer,
                              should_cancel=should_cancel, keep=keep_frames)
        return GenerationResult(frames=frames, width=frames.shape[2], height=frames.shape[1],
                                num_frames=count, seed=int(state.seed), mode=state.mode,
                                num_inference_steps=int(state.num_inference_steps),
                                guidance_scale=float(state.guidance_scale), timings=timer.timings, state=None,
                                model=state.model)

    def _live_world(self, request: GenerationRequest) -> World:
        if self.sequence_parallel is not None:
            raise PipelineError("a world that steps chunk by chunk runs on one GPU; this worker splits its DiT "
                                "across several (WORLDPLAY_SEQUENCE_PARALLEL)")
        if self.encoders is None or self.vae is None:
            raise PipelineError("this pipeline was loaded without encoders and VAE: it cannot open a world")
        if request.model not in self.transformers:
            raise ModelUnavailableError(f"model {request.model!r} is not loaded on this worker "
                                        f"(loaded: {', '.join(self.models)})")
        if request.steps < 1:
            raise PipelineError("num_inference_steps must be at least 1")
        self.check_decoder(request.decoder)
        if request.history is not None:
            self._check_state(request.history, request.model, new_latents=0)
        timer = _Timer(self.device)
        past = request.history.num_latents if request.history is not None else 0
        # a live world hands every chunk's frames back from its step: no decoding later
        chunks = ChunkFrames(self.vae, timer, None, during_denoise=True, history_latents=past, keep=False,
                             fallback=False, fast_model=self._fast_model(request.decoder))
        return self._world(model=request.model, seed=int(request.seed), prompt=request.prompt,
                           negative_prompt=request.negative_prompt, steps=request.steps, guidance=request.guidance,
                           image=request.image, history=request.history, timer=timer, frames=chunks,
                           follower=False, limits=None)

    def _world(self, *, model: str, seed: int, prompt: str, negative_prompt: str, steps: int, guidance: float,
               image, history: WorldState | None, timer: "_Timer", frames: "ChunkFrames | None", follower: bool,
               limits) -> World:
        """Prepare a world's inputs (rank 0: image latent, image embedding, conditioning; with sequence
        parallelism they are broadcast to the followers, which encode nothing) and build it."""
        self.use_cpu_threads()
        sp = self.sequence_parallel
        use_cfg = guidance > 1.0
        if follower:
            received = _share_inputs(sp, None, self.device)
            image_latent, rest = received[0], received[1:]
            history_latents = None
            if history is not None:
                history_latents, rest = rest[0], rest[1:]
            positive = Conditioning(*rest[:5])
            negative = Conditioning(*rest[5:10]) if use_cfg else None
            width = height = 0
            vision = None
        else:
            try:  # preparing rank 0's inputs; the followers wait for them above
                transformer = self.transformers[model]
                if history is None:
                    with timer.stage("prepare_image"):
                        image = _as_rgb(image)
                        width, height = comp.select_bucket(image.width, image.height,
                                                           transformer.config.resolution_base)
                        pixels = comp.prepare_image(image, width, height).to(self.device, self.dtype)
                        image_latent = comp.encode_condition_latents(self.vae, pixels)  # [1, C, 1, h, w]
                        vision = self.encoders.encode_image(image, width, height)
                    history_latents = None
                else:  # a world session: the image's latent and embedding come from the state
                    width, height = history.width, history.height
                    image_latent = history.image_latent[None, :, None].to(self.device, self.dtype)
                    vision = history.vision[None].to(self.device, self.dtype)
                    history_latents = history.latents.permute(1, 0, 2, 3).unsqueeze(0).to(torch.float32)
                positive, negative = self._world_conditioning(prompt, negative_prompt, vision, guidance, timer)
            except Exception as exc:
                if sp is not None:  # tell the followers, which wait for the inputs' shapes, instead of hanging them
                    sp.share(("failed", f"{type(exc).__name__}: {exc}"[:500]))
                    exc.ranks_in_step = True  # type: ignore[attr-defined]  # (RankedPipeline.generate)
                raise
            if sp is not None:
                shared = [image_latent] + ([history_latents.to(self.device)] if history is not None else [])
                _share_inputs(sp, shared + [*positive.tensors(), *(negative.tensors() if negative else ())])
        return World(self, model=model, seed=seed, prompt=prompt, negative_prompt=negative_prompt, steps=steps,
                     guidance=guidance, width=width, height=height, image_latent=image_latent, vision=vision,
                     positive=positive, negative=negative, history=history, history_latents=history_latents,
                     frames=frames, timer=timer, limits=limits)

    def use_cpu_threads(self) -> None:
        """Run this thread's CPU kernels with :attr:`cpu_threads` (a thread keeps the count it first ran with,
        and the count decides the bits): every entry that computes calls it (opening a world, its steps, a
        prompt change), so a world is the same whichever thread opens and steps it."""
        if self.cpu_threads and torch.get_num_threads() != self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)

    def _world_conditioning(self, prompt: str, negative_prompt: str, vision: torch.Tensor, guidance: float,
                            timer: "_Timer") -> tuple[Conditioning, Conditioning | None]:
        """Both CFG branches' conditioning (the negative one only with guidance > 1); the text encoder
        visits the GPU only when a prompt misses the cache."""
        use_cfg = guidance > 1.0
        prompts = [prompt] + ([negative_prompt] if use_cfg else [])
        need_text_encoder = any(not self.encoders.is_cached(p) for p in prompts)
        with torch.inference_mode(), timer.stage("encode_prompt"), self._text_encoder_on_device(need_text_encoder):
            positive = self._conditioning(prompt, vision)
            negative = self._conditioning(negative_prompt, vision, negative=True) if use_cfg else None
        return positive, negative

    def _conditioning(self, prompt: str, vision: torch.Tensor, *, negative: bool = False) -> Conditioning:
        """The branch's conditioning. The negative (CFG) branch gets an empty byT5 input (zeros, mask 0)
        whatever its prompt quotes, as upstream HY-WorldPlay does: glyph text only steers towards."""
        embeds = self.encoders.encode_prompt(prompt)
        byt5, byt5_mask = embeds.byt5, embeds.byt5_mask
        if negative:
            byt5, byt5_mask = torch.zeros_like(byt5), torch.zeros_like(byt5_mask)
        return Conditioning(
            text=embeds.text,
            text_mask=embeds.text_mask,
            byt5=byt5,
            byt5_mask=byt5_mask,
            vision=vision,
        )

    def _text_encoder_on_device(self, needed: bool):
        if self._text_encoder_host is None or not needed:
            return nullcontext()
        return self._text_encoder_host.on_device()


class ChunkFrames:
    """Turns the rollout's finished chunks into uint8 frames, in order, and hands each chunk over.

    With `during_denoise`, a chunk is decoded the moment the rollout reports it clean (``chunk_done``),
    so its frames reach `on_frames` while later chunks denoise; otherwise the chunks wait for
    :meth:`finish`, after the rollout has released the DiT's K/V cache.

    If a decode during denoising runs out of GPU memory (the decoder's carried state and one pass's
    activations sit beside the K/V cache), the job does not fail: the decoder and its half-updated
    state are dropped, the remaining chunks wait for :meth:`finish`, and there a fresh decoder first
    re-reads the chunks already handed over (to rebuild its causal state; their frames are not handed
    over twice), then decodes the rest. The frames are the same; only the overlap is lost.
    """

    def __init__(self, vae, timer: _Timer, on_frames: Callable[[np.ndarray], None] | None, *, during_denoise: bool,
                 history_latents: int = 0, keep: bool = True, fallback: bool = True, fast_model=None):
        self.vae = vae
        # decode with the TAEHV tiny decoder (pipeline.encoders.fast_decode) instead of the VAE
        self.fast_model = fast_model
        self.keep = keep  # keep every chunk's frames for finish() (a job); a live world hands them on only
        self.fallback = fallback  # on out-of-memory, decode after the rollout (a job) or raise (a live world)
        self.timer = timer
        self.on_frames = on_frames
        self.during_denoise = during_denoise
        # a world session resumes after `history_latents` clean latents: the decoder's causal state is
        # rebuilt from the last of them before the first new chunk (see _new_decoder)
        self.history_latents = history_latents
        self.decoder: CausalVAEDecoder | None = None
        self.pieces: list[np.ndarray] = []
        self.handed_over: list[tuple[int, int]] = []  # chunks whose frames are in `pieces`
        self.waiting: list[tuple[int, int]] = []  # chunks denoised but not decoded yet
        self.fell_back = False

    @property
    def latents_decoded(self) -> int:
        return self.handed_over[-1][1] if self.handed_over else self.history_latents

    @property
    def decoder_name(self) -> str:
        return "fast" if self.fast_model is not None else "full"

    def _new_decoder(self, latents: torch.Tensor) -> "CausalVAEDecoder | FastVideoDecoder":
        """A decoder ready for latent `history_latents`: after a session's history, its state is rebuilt
        by re-reading the history's last latents as far back as the decoder's receptive field reaches
        (frames dropped), which makes the next frames exactly those of one long decode."""
        decoder = FastVideoDecoder(self.fast_model) if self.fast_model is not None else CausalVAEDecoder(self.vae)
        if self.history_latents:
            start = max(0, self.history_latents - decoder.history_latents())
            with self.timer.stage("decode_resume"):
                decoder.resume(latents[:, :, start:self.history_latents], start)
        return decoder

    def chunk_done(self, start: int, end: int, latents: torch.Tensor) -> np.ndarray | None:
        """The rollout's ``on_chunk``: latents[:, :, start:end] are final. Returns the chunk's frames, or
        None when they wait for :meth:`finish`."""
        if not self.during_denoise:
            self.waiting.append((start, end))
            return None
        try:
            if self.decoder is None:
                self.decoder = self._new_decoder(latents)
            return self._decode_and_hand_over(start, end, latents)
        except torch.OutOfMemoryError:
            if not self.fallback:
                raise
            # handled below, once the exception (and the tensors its traceback holds) is gone
        logger.warning(
            "out of GPU memory decoding latents %d..%d beside the K/V cache; the rest of this video is decoded "
            "after the rollout, and so is every later video on this worker", start, end - 1,
        )
        self.fell_back = True
        self.during_denoise = False
        self.decoder = None
        self.waiting.append((start, end))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None

    def finish(self, latents: torch.Tensor) -> np.ndarray:
        """Decode whatever is still waiting and return all the frames [T, H, W, 3]."""
        if self.decoder is None:
            self.decoder = self._new_decoder(latents)
            with self.timer.stage("decode"):
                for start, end in self.handed_over:
                    self.decoder.decode(latents[:, :, start:end])
        for start, end in self.waiting:
            self._decode_and_hand_over(start, end, latents)
        self.waiting.clear()
        return self.pieces[0] if len(self.pieces) == 1 else np.concatenate(self.pieces)

    def _decode_and_hand_over(self, start: int, end: int, latents: torch.Tensor) -> np.ndarray:
        with self.timer.stage("decode"):
            frames = comp.frames_to_uint8(self.decoder.decode(latents[:, :, start:end]))
        if self.keep:
            self.pieces.append(frames)
        self.handed_over.append((start, end))
        if self.on_frames is not None:
            with self.timer.stage("hand_over"):
                self.on_frames(frames)
        return frames


def decode_state(state: WorldState, vae, on_frames: Callable[[np.ndarray], None] | None = None, *, fast_model=None,
                 timer: "_Timer | None" = None, should_cancel: Callable[[], bool] | None = None,
                 keep: bool = True) -> np.ndarray:
    """Every latent of a world state decoded again, in order, one AR chunk (4 latents) per call of one causal
    decoder (the VAE, or the fast decoder `fast_model`): the frames [T, H, W, 3] a job with that decoder made
    of the same latents, each chunk handed to `on_frames` as it is decoded. Without `keep` the frames are
    only handed over (a long session's video need not sit in memory) and an empty [0, H, W, 3] array is
    returned. `should_cancel` is polled before every chunk (:class:`GenerationCancelled`)."""
    param = next((fast_model if fast_model is not None else vae).parameters())
    latents = state.latents.permute(1, 0, 2, 3).unsqueeze(0)  # [T, C, h, w] -> [1, C, T, h, w]; moved per chunk
    chunks = ChunkFrames(vae, timer or _Timer(param.device), on_frames, during_denoise=True, keep=keep,
                         fallback=False, fast_model=fast_model)
    total = latents.shape[2]
    with torch.inference_mode():
        for start in range(0, total, AR_CHUNK_LATENTS):
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled("cancelled while decoding the world state")
            last = chunks.chunk_done(start, min(start + AR_CHUNK_LATENTS, total), latents)
        if keep:
            return chunks.finish(latents)
    return np.zeros((0, *last.shape[1:]), np.uint8)


def load_fast_decoder_for(paths, device: torch.device, dtype: torch.dtype):
    """The fast decoder of resolved model paths (``paths.fast_decoder``: a path, or why there is none;
    :mod:`pipeline.model_files.fast_decoder`), or None and why. A file that does not load is logged and
    reported, never fatal: the worker serves the full VAE."""
    from pipeline.encoders.fast_decode import load_fast_decoder

    found = getattr(paths, "fast_decoder", None)
    if found is None or getattr(found, "path", None) is None:
        reason = getattr(found, "reason", None) or "not resolved"
        logger.info("no fast decoder: %s", reason)
        return None, {"reason": reason}
    try:
        model = load_fast_decoder(found.path, device=device, dtype=dtype)
    except PipelineError as exc:
        logger.warning("fast decoder %s not loaded: %s", found.path, exc.message)
        return None, {"reason": exc.message}
    return model, {"file": {"path": str(found.path), "source": found.source, "variant": model.config.variant}}


class HostResident:
    """A module whose weights live in (pinned) host memory and visit `device` only while needed.

    Visiting costs one host-to-device copy; leaving costs nothing (the GPU copies are dropped and
    the parameters point at the host tensors again), unlike `module.to("cpu")`.
    """

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.module = module
        self.device = device
        self.host: dict[str, torch.Tensor] = {}
        pin = device.type == "cuda"
        for name, tensor in self._tensors():
            host = tensor.data.to("cpu")
            self.host[name] = host.pin_memory() if pin else host
            tensor.data = self.host[name]
        if pin:
            torch.cuda.empty_cache()

    def _tensors(self):
        yield from self.module.named_parameters(remove_duplicate=False)
        yield from self.module.named_buffers(remove_duplicate=False)

    @contextmanager
    def on_device(self) -> Iterator[None]:
        for name, tensor in self._tensors():
            tensor.data = self.host[name].to(self.device, non_blocking=True)
        try:
            yield
        finally:
            for name, tensor in self._tensors():
                tensor.data = self.host[name]


def _config_fingerprint(transformer: WorldPlayTransformer) -> str:
    """Identity of a transformer built without a checkpoint path (its config only)."""
    import dataclasses
    import hashlib
    import json

    config = {k: v for k, v in dataclasses.asdict(transformer.config).items() if k != "extra"}
    return "config-sha256:" + hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _as_rgb(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ImageError("the conditioning image must be a PIL image")
    return image if image.mode == "RGB" else image.convert("RGB")


RUNPOD_VOLUME = "/runpod-volume"


def compile_cache_dir() -> str | None:
    """Where torch.compile keeps its compiled kernels across worker starts.

    ``WORLDPLAY_COMPILE_CACHE`` if set (empty: torch's default, in the container's /tmp); else a folder
    on the RunPod network volume when one is mounted, so a new worker reuses the kernels an earlier
    one compiled (CPU, tiny model: warm-up 30.3 s with an empty cache, 10.8 s with a warm one;
    docs/PERFORMANCE.md). An operator's own ``TORCHINDUCTOR_CACHE_DIR`` wins over both.
    """
    torch_own = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if torch_own and os.path.abspath(torch_own) != _torch_default_cache_dir():
        return torch_own  # an operator's choice (torch writes its default there itself once imported)
    chosen = os.environ.get("WORLDPLAY_COMPILE_CACHE")
    if chosen is not None:
        return chosen.strip() or None
    if os.path.isdir(RUNPOD_VOLUME) and os.access(RUNPOD_VOLUME, os.W_OK):
        return os.path.join(RUNPOD_VOLUME, "worldplay", "torch-compile-cache")
    return None


def _torch_default_cache_dir() -> str:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # a torch without inductor: nothing to compare with
        return ""
    return os.path.abspath(default_cache_dir())


def _compile_with_cache() -> bool:
    cache = compile_cache_dir()
    if cache:
        try:
            os.makedirs(cache, exist_ok=True)
        except OSError as exc:  # a read-only or full volume: compile anyway, into torch's default folder
            logger.warning("torch.compile cache %s unusable (%s); using torch's default", cache, exc)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            logger.info("torch.compile cache: %s", cache)
    return enable_compile()


def should_offload_encoders(device: torch.device) -> bool:
    """Keep the encoders resident when the GPU has room for DiT + encoders + AR cache (>= 100 GB)."""
    if device.type != "cuda":
        return False
    choice = env_flag("WORLDPLAY_OFFLOAD_ENCODERS", None)  # "auto" (or unset): by the GPU's size
    if choice is not None:
        return choice
    total = torch.cuda.get_device_properties(device).total_memory
    return total < 100 * 1024**3


__all__ = ["AR_CHUNK_LATENTS", "GenerationRequest", "GenerationResult", "WorldPlayPipeline", "MODES", "DEFAULTS"]
