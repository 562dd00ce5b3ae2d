"""The request/response contract of the worker (pydantic v2).

``job["input"]`` is either a generation request (:class:`JobInput`) or a health check
(:class:`HealthInput`, ``{"health": true}``). Validation is strict: booleans are not integers,
strings are not numbers, unknown fields are rejected by name.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.checkpoints import CHECKPOINTS, MODE_ALIASES, resolve_model, rollout_of
from pipeline.limits import MAX_FRAMES, MAX_LATENTS

# ---- limits ---------------------------------------------------------------------------------
MAX_PROMPT_CHARS = 2000
MAX_IMAGE_BYTES = 7 * 1024 * 1024  # decoded; keeps a /run payload (10 MB, base64) under the cap
MAX_IMAGE_PIXELS = 40_000_000
MIN_IMAGE_SIDE = 16
MAX_BASE64_CHARS = math.ceil(MAX_IMAGE_BYTES / 3) * 4 + 256  # + room for a data: URL prefix
MAX_KEY_CHARS = 1024
MAX_URL_CHARS = 2048
MAX_POSE_STRING_CHARS = 4000
MAX_POSE_ENTRIES = MAX_LATENTS  # one pose per latent
MAX_ACTIONS = MAX_LATENTS  # each action moves at least one latent
MAX_POSE_JSON_BYTES = 2 * 1024 * 1024
# MAX_FRAMES (1021 frames = MAX_LATENTS 256): pipeline.limits, shared with the camera parser
MAX_STEPS = 100
MAX_SEED = 2**32 - 1
RANDOM_SEED_MAX = 2**31 - 1
DEFAULT_POSE = "w-31"
DEFAULT_KEY_PREFIX = "worldplay"
CONTINUE_LATENTS = 32  # default camera of a continuation: "w-32", 128 new frames

#: model -> its published defaults (pipeline.checkpoints: upstream's scripts)
MODEL_DEFAULTS = {name: {"num_inference_steps": c.steps, "guidance_scale": c.guidance}
                  for name, c in CHECKPOINTS.items()}
#: the older `mode` names: mode -> the defaults of the model it means
MODE_DEFAULTS = {mode: MODEL_DEFAULTS[model] for mode, model in MODE_ALIASES.items()}
ModelName = Literal["ar_distilled", "ar", "ar_rl", "bidirectional"]
Decoder = Literal["full", "fast"]
DECODER_DESCRIPTION = ('Latents to frames: "full", the HunyuanVideo-1.5 VAE; "fast", the TAEHV tiny decoder (several '
                       "times faster, lower quality), on workers that have its weights (else MODEL_UNAVAILABLE, "
                       "before any GPU work). A saved world state holds latents either way.")

_KEY_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_DATA_URL_RE = re.compile(r"^data:image/(png|jpeg|jpg|webp);base64,", re.IGNORECASE)

# JSON Schema of one action-list item (the camera parser, pipeline.generation.camera, does the checking;
# this documents it for `python -m schemas` users).
ACTION_ITEM_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["key"],
    "oneOf": [{"required": ["moves"]}, {"required": ["latents"]}],
    "properties": {
        "key": {"type": "string", "description": "w, s, a, d, up, down, left, right; several "
                                                 "held together joined with '+', e.g. 'w+left'; "
                                                 "'idle' stands still"},
        "moves": {"type": "integer", "minimum": 1,
                  "description": "moves of this action, 1 latent (4 frames) each; the start latent "
                                 "is extra, so moves adding up to 31 give 125 frames"},
        "latents": {"type": "integer", "minimum": 1, "deprecated": True,
                    "description": "deprecated old name of 'moves' (same meaning)"},
        "speed": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                  "description": "scene units per move for w/s/a/d (default 0.08)"},
        "degrees": {"type": "number", "exclusiveMinimum": 0, "maximum": 30,
                    "description": "degrees per move for up/down/left/right (default 3)"},
    },
}

IMAGE_FIELDS = ("image_key", "image_url", "image_base64")
CAMERA_FIELDS = ("pose", "pose_key", "pose_json", "actions")


def _check_object_key(value: str, what: str) -> str:
    if not value or not value.strip():
        raise ValueError(f"{what} must not be empty")
    if _CONTROL_RE.search(value):
        raise ValueError(f"{what} must not contain control characters")
    if value.startswith("/"):
        raise ValueError(f"{what} must not start with '/'")
    if any(part == ".." for part in value.split("/")):
        raise ValueError(f"{what} must not contain '..' path segments")
    return value


def _check_url_syntax(url: str) -> None:
    """A parsable URL with a host and a valid port (the fetch decides which hosts are allowed)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(f"image_url is not a valid URL ({exc})") from None
    if not host:
        raise ValueError("image_url has no host")
    hostport = parts.netloc.rsplit("@", 1)[-1]
    if hostport.startswith("[") and not re.fullmatch(r"\[[^\]]*\](:[0-9]*)?", hostport):
        raise ValueError("image_url is not a valid URL (text after the bracketed address)")
    if not host.isascii():
        try:
            host.encode("idna")
        except UnicodeError:
            raise ValueError("image_url has an invalid host name") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class OutputOptions(_Strict):
    """Where the video goes and how long its presigned link lives."""

    key_prefix: str = Field(
        DEFAULT_KEY_PREFIX, min_length=1, max_length=256,
        description="Object key prefix: the video is stored at {key_prefix}/{job_id}/video.mp4. "
                    "Letters, digits and . _ - / only; no '..' segments.")
    presign_expiry_seconds: int = Field(3600, ge=60, le=604800,
                                        description="Lifetime of the presigned URL (60 s .. 7 days).")
    preview: bool = Field(True, description="Live preview: publish the video as an HLS stream "
                                            "({key_prefix}/{job_id}/preview/index.m3u8) while it "
                                            "is generated; progress updates carry preview_url. "
                                            "Off on workers with WORLDPLAY_PREVIEW=0.")
    save_state: bool = Field(True, description="Save the world state at {key_prefix}/{job_id}/world.safetensors "
                                               "(returned as state_key) so a later job can continue it.")

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not v or not _KEY_PREFIX_RE.fullmatch(v):  # fullmatch: '$' also matches before \n
            raise ValueError("key_prefix may only contain letters, digits and . _ - / "
                             "and must start with a letter or digit")
        if any(part in ("..", ".", "") for part in v.split("/")):
            raise ValueError("key_prefix must not contain empty, '.' or '..' segments")
        return v


def _legacy_alias_schema(schema: Dict[str, Any]) -> None:
    # JSON Schema shows validation aliases only by their first name; keep the legacy one valid.
    props = schema.get("properties", {})
    if "image_key" in props:
        props["input_image_minio_path"] = {**props["image_key"], "title": "Input Image Minio Path",
                                           "description": "Legacy alias of image_key.",
                                           "deprecated": True}


def _job_input_schema(schema: Dict[str, Any]) -> None:
    _legacy_alias_schema(schema)
    # prompt is required unless the job continues a world state (which carries its prompt)
    schema["anyOf"] = [{"required": ["prompt"]}, {"required": ["continue_from"]}]


class JobInput(_Strict):
    """A generation request: prompt + one image source + one camera source."""

    model_config = ConfigDict(json_schema_extra=_job_input_schema)
    # no camera field was sent: the path was made from num_frames (or the default); errors about its
    # length are then worded in the num_frames the user wrote
    _camera_defaulted: bool = PrivateAttr(default=False)

    prompt: Optional[str] = Field(None, max_length=MAX_PROMPT_CHARS,
                                  description="What the scene looks like (required, non-empty; with "
                                              "continue_from it defaults to the state's prompt).")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS,
                                 description="Used only when guidance_scale > 1.")

    image_key: Optional[str] = Field(
        None, max_length=MAX_KEY_CHARS,
        validation_alias=AliasChoices("image_key", "input_image_minio_path"),
        description="Object key of the input image in the worker's bucket "
                    "(alias: input_image_minio_path).")
    image_url: Optional[str] = Field(None, max_length=MAX_URL_CHARS,
                                     description="http(s) URL of the input image.")
    image_base64: Optional[str] = Field(
        None, max_length=MAX_BASE64_CHARS,
        description=f"Base64 image (optionally a data: URL), at most {MAX_IMAGE_BYTES // 2**20} MB "
                    "decoded.")

    pose: Optional[str] = Field(None, max_length=MAX_POSE_STRING_CHARS,
                                description='Pose string, e.g. "w-31" or "w-15, right-16": '
                                            "KEY-N moves N latents (4 frames each) after the "
                                            'start latent, so "w-31" is 32 latents = 125 '
                                            'frames. Default: "w-31", or forward for '
                                            "num_frames when that is given.")
    pose_key: Optional[str] = Field(None, max_length=MAX_KEY_CHARS,
                                    description="Object key of a pose JSON in the bucket.")
    pose_json: Optional[Dict[str, Any]] = Field(
        None, description='Inline pose JSON: {"0": {"extrinsic": 4x4 c2w, "K": 3x3}, ...}, one '
                          "entry per latent, the start included (32 entries = 125 frames).")
    actions: Optional[List[Dict[str, Any]]] = Field(
        None, min_length=1, max_length=MAX_ACTIONS,
        description='Keyboard actions: [{"key": "w", "moves": 15, "speed": 0.12}, ...]; "moves" '
                    "counts moves like the pose string (the start latent is extra); "
                    '"latents" is its deprecated old name.',
        json_schema_extra={"items": ACTION_ITEM_SCHEMA})

    model: Optional[ModelName] = Field(
        None, description="Which WorldPlay checkpoint renders: ar_distilled (default; autoregressive, 4 steps, "
                          "no CFG), ar (autoregressive, 50 steps + CFG 6), ar_rl (ar with RL post-training, 50 "
                          "steps + CFG 6), bidirectional (50 steps + CFG 6). The worker serves those in "
                          "WORLDPLAY_MODELS. With continue_from it defaults to the state's.")
    mode: Optional[Literal["ar", "bidirectional"]] = Field(
        None, description="Older alias of model: ar = ar_distilled, bidirectional = bidirectional "
                          "(given with model, the two must agree). Default ar.")
    resolution: Literal["480p", "720p"] = Field(
        "480p", description='Resolution of the video: "480p" (the world model\'s own, e.g. 848x480) or "720p": '
                            "HunyuanVideo-1.5's super-resolution stage (upsampler + 6-step distilled SR "
                            "transformer) after generation, e.g. 1280x720; only on workers started with "
                            "WORLDPLAY_SR=1, for new worlds of at most 125 frames (the SR transformer attends "
                            "over the whole video). The live preview and the saved world state stay 480p.")
    num_frames: Optional[int] = Field(
        None, ge=1, le=MAX_FRAMES,
        description="Frames of the video: must equal the frames the camera path gives "
                    "(4*(latents-1)+1; the autoregressive models need latents % 4 == 0: 13, 29, 45, 61, "
                    "...; bidirectional % 16 == 0: 61, 125, ...). With no camera field the default "
                    "path is straight forward for this many frames.")
    num_inference_steps: Optional[int] = Field(None, ge=1, le=MAX_STEPS,
                                               description="Default: the model's (4 for ar_distilled, "
                                                           "50 for ar, ar_rl and bidirectional).")
    guidance_scale: Optional[float] = Field(None, ge=1.0, le=20.0,
                                            description="Default: the model's (1.0 for ar_distilled, "
                                                        "6.0 for the others); > 1 runs CFG.")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED,
                                description="null: random in 0..2^31-1 (returned in the output).")
    fps: int = Field(24, ge=1, le=60, description="Frame rate of the MP4.")
    decoder: Decoder = Field("full", description=DECODER_DESCRIPTION)
    output: OutputOptions = Field(default_factory=OutputOptions)
    continue_from: Optional[str] = Field(
        None, max_length=MAX_KEY_CHARS,
        description="state_key of an earlier job: continue its world. The camera path then gives only the "
                    "new latents, no image is sent, and prompt, negative_prompt, model, steps, guidance and "
                    "seed default to the state's (the state's model is the only one that continues it).")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict) and "image_key" in data and "input_image_minio_path" in data:
            raise ValueError("give image_key or its alias input_image_minio_path, not both")
        return data

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        v = v.strip()
        if not v:
            raise ValueError("prompt must not be empty")
        return v

    @field_validator("image_key", "pose_key", "continue_from")
    @classmethod
    def _key(cls, v: Optional[str], info) -> Optional[str]:
        return None if v is None else _check_object_key(v, info.field_name)

    @field_validator("image_url")
    @classmethod
    def _url(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        v = v.strip()
        low = v.lower()
        if not (low.startswith("http://") or low.startswith("https://")):
            raise ValueError("image_url must be an http:// or https:// URL")
        if _CONTROL_RE.search(v) or " " in v:
            raise ValueError("image_url must not contain spaces or control characters")
        _check_url_syntax(v)
        return v

    @field_validator("image_base64")
    @classmethod
    def _b64(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        body = strip_data_url(v)
        # 4 base64 chars carry 3 bytes; whitespace is ignored by the decoder.
        approx = (len(body) - body.count("\n") - body.count("\r") - body.count(" ")) * 3 // 4
        if approx > MAX_IMAGE_BYTES:
            raise ValueError(f"decoded image would be about {approx / 2**20:.1f} MB; the limit is "
                             f"{MAX_IMAGE_BYTES // 2**20} MB (use image_key or image_url for large "
                             "images)")
        if not body.strip():
            raise ValueError("image_base64 must not be empty")
        return v

    @field_validator("pose")
    @classmethod
    def _pose(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.strip():
            raise ValueError("pose must not be empty")
        return v

    @field_validator("pose_json")
    @classmethod
    def _pose_json(cls, v: Optional[dict]) -> Optional[dict]:
        if v is not None:
            if not v:
                raise ValueError("pose_json must not be empty")
            if len(v) > MAX_POSE_ENTRIES:
                raise ValueError(f"pose_json has {len(v)} entries; at most {MAX_POSE_ENTRIES}")
        return v

    @model_validator(mode="after")
    def _model_and_mode(self) -> "JobInput":
        resolve_model(self.model, self.mode)  # ValueError -> INVALID_INPUT when the two disagree
        return self

    @model_validator(mode="after")
    def _exactly_one(self) -> "JobInput":
        images = [name for name in IMAGE_FIELDS if getattr(self, name) is not None]
        if self.continue_from is not None:
            if images:
                raise ValueError(f"continue_from takes no image ({', '.join(images)} given): the world state "
                                 "carries the image")
            if self.resolution != "480p":
                raise ValueError(f"resolution {self.resolution!r} is for new worlds: a continuation renders 480p "
                                 "(the super-resolution stage needs the picture, which a world state does not keep)")
        elif self.prompt is None:
            raise ValueError("prompt: field required")
        elif len(images) != 1:
            given = ", ".join(images) if images else "none"
            raise ValueError("exactly one of image_key (alias input_image_minio_path), image_url, "
                             f"image_base64 is required (given: {given})")
        cameras = [name for name in CAMERA_FIELDS if getattr(self, name) is not None]
        if len(cameras) > 1:
            raise ValueError("at most one of pose, pose_key, pose_json, actions may be given "
                             f"(given: {', '.join(cameras)})")
        if not cameras and self.continue_from is not None:  # a continuation adds 4 frames per latent
            self.pose = f"w-{max(1, self.num_frames // 4) if self.num_frames else CONTINUE_LATENTS}"
        elif not cameras:
            self.pose = default_pose(self.num_frames)
        self._camera_defaulted = not cameras
        return self

    @property
    def camera_defaulted(self) -> bool:
        """True when no camera field was sent (the path comes from ``num_frames`` or the default)."""
        return self._camera_defaulted

    # ---- resolved values -------------------------------------------------------------------
    @property
    def image_source(self) -> str:
        return next((name for name in IMAGE_FIELDS if getattr(self, name) is not None), "continue_from")

    @property
    def camera_source(self) -> str:
        return next(name for name in CAMERA_FIELDS if getattr(self, name) is not None)

    @property
    def model_named(self) -> bool:
        """Whether the request names its model (through model or mode); else the default or the state's."""
        return self.model is not None or self.mode is not None

    @property
    def resolved_model(self) -> str:
        """The model this request runs: model, else what mode means, else ar_distilled."""
        return resolve_model(self.model, self.mode)

    @property
    def rollout(self) -> str:
        """The resolved model's rollout: ar or bidirectional."""
        return rollout_of(self.resolved_model)

    @property
    def steps(self) -> int:
        return self.num_inference_steps or MODEL_DEFAULTS[self.resolved_model]["num_inference_steps"]

    @property
    def guidance(self) -> float:
        if self.guidance_scale is None:
            return MODEL_DEFAULTS[self.resolved_model]["guidance_scale"]
        return float(self.guidance_scale)

    def summary(self) -> dict:
        """A log-safe description of the request (no image data, no long strings)."""
        return {
            "model": self.resolved_model,
            "image": self.image_source,
            "camera": self.camera_source,
            "pose": self.pose if self.pose and len(self.pose) <= 80 else None,
            "num_frames": self.num_frames,
            "steps": self.steps,
            "guidance": self.guidance,
            "seed": self.seed,
            "fps": self.fps,
            "decoder": self.decoder,
            "prompt_chars": len(self.prompt or ""),
            "continue_from": self.continue_from is not None,
            "resolution": self.resolution,
        }


class RedecodeInput(_Strict):
    """``{"redecode_from": state_key}``: a saved world's whole video again from its latents, no generation."""

    redecode_from: str = Field(
        ..., max_length=MAX_KEY_CHARS,
        description="state_key of a job or a live world: its whole video is decoded again from the state's "
                    "latents (a live world streamed with the fast decoder, at full quality), no generation. "
                    "Takes only decoder, fps and output; the state is not saved again.")
    decoder: Decoder = Field("full", description=DECODER_DESCRIPTION)
    fps: int = Field(24, ge=1, le=60, description="Frame rate of the MP4.")
    output: OutputOptions = Field(default_factory=OutputOptions)

    @field_validator("redecode_from")
    @classmethod
    def _key(cls, v: str) -> str:
        return _check_object_key(v, "redecode_from")

    def summary(self) -> dict:
        """A log-safe description of the request."""
        return {"redecode_from": True, "decoder": self.decoder, "fps": self.fps}


class HealthInput(_Strict):
    """``{"health": true}``: report readiness without generating."""

    health: bool = Field(..., description="Must be true.")

    @field_validator("health")
    @classmethod
    def _true(cls, v: bool) -> bool:
        if v is not True:
            raise ValueError("health must be true")
        return v


class Timings(BaseModel):
    """Seconds per stage of the job."""

    validate_: float = Field(0.0, alias="validate", serialization_alias="validate")
    fetch: float = Field(0.0, description="Reading the image and camera inputs.")
    load: float = Field(0.0, description="Loading the models (only on a worker's first job).")
    generate: float = Field(0.0, description="Denoising, with each chunk decoded and handed to the H.264 "
                                             "encoder as soon as it is done.")
    encode: float = Field(0.0, description="Finishing the MP4 after the last chunk (encoding runs beside "
                                           "generation).")
    upload: float = 0.0

    model_config = ConfigDict(populate_by_name=True)


class JobOutput(BaseModel):
    """A successful generation. With a bucket configured: minio_key, bucket, presigned_url and
    expires_at; with no storage (no MINIO_* set): video_base64 instead."""

    minio_key: Optional[str] = Field(None, description="Object key of the MP4 in the bucket.")
    bucket: Optional[str] = None
    presigned_url: Optional[str] = Field(None, description="Time-limited GET URL of the MP4.")
    expires_at: Optional[str] = Field(None, description="Expiry of presigned_url, ISO-8601 UTC.")
    video_base64: Optional[str] = Field(
        None, description="The MP4 itself, base64, when the worker has no storage configured "
                          "(at most WORLDPLAY_INLINE_MAX_BYTES before encoding, default 6 MiB).")
    num_frames: int
    fps: int
    width: int
    height: int
    duration_seconds: float
    seed: int
    model: ModelName = Field(..., description="The checkpoint that rendered the video.")
    mode: Literal["ar", "bidirectional"] = Field(..., description="Its rollout (ar: every autoregressive model).")
    num_inference_steps: int
    guidance_scale: float
    timings: Timings = Field(..., description="Seconds per stage.")
    generation_time_seconds: float = Field(..., description="Wall time of the whole job.")
    preview_key: Optional[str] = Field(None, description="Object key of the live preview's HLS "
                                                         "playlist (null when the preview is off).")
    preview_url: Optional[str] = Field(None, description="Presigned URL of that playlist (same "
                                                         "lifetime as presigned_url), signed as the "
                                                         "job ends.")
    preview_expires_at: Optional[str] = Field(None, description="Until when preview_url and the "
                                                                "segment URLs its playlist lists "
                                                                "play, ISO-8601 UTC.")
    preview_segments: Optional[int] = Field(None, description="Segments the playlist lists.")
    state_key: Optional[str] = Field(None, description="Object key of the world state (the whole session so "
                                                       "far); pass it as continue_from. null when not saved.")
    session_latents: Optional[int] = Field(None, description="Latents in the world session after this job "
                                                             "(the video holds only this job's part).")
    state_error: Optional[str] = Field(None, description="Why the world state could not be stored (the "
                                                         "video was); null otherwise.")


class HealthOutput(BaseModel):
    status: Literal["ok", "degraded", "error"]
    models_loaded: bool
    models: List[str] = Field(default_factory=list, description="Models this worker serves (WORLDPLAY_MODELS, "
                                                                "or the older WORLDPLAY_MODES).")
    loaded_models: List[str] = Field(default_factory=list)
    modes: List[str] = Field(..., description="The rollouts of those models (ar, bidirectional).")
    loaded_modes: List[str]

    device: Optional[str] = None
    dtype: Optional[str] = None
    versions: Dict[str, Optional[str]]
    model: Dict[str, Any] = Field(default_factory=dict, description="pipe.health() when loaded.")
    model_error: Optional[str] = None
    weights: Optional[Dict[str, Any]] = Field(
        default=None, description="Before the models are loaded: whether the weights resolve without "
        "loading or downloading (resolved, sources or problem, download_allowed); null once loaded.")
    storage: Dict[str, Any]


class ErrorOutput(BaseModel):
    error: str = Field(..., description='"CODE: message"')
    refresh_worker: Optional[bool] = None


def default_pose(num_frames: Optional[int] = None) -> str:
    """The camera path of a request without a camera field: straight forward, ``num_frames`` long
    when that is a ``4k+1`` count above 1 (``w-k``), else :data:`DEFAULT_POSE` (an invalid
    ``num_frames`` is then reported by the frame-count check, in frames)."""
    if num_frames is not None and num_frames > 1 and (num_frames - 1) % 4 == 0:
        return f"w-{(num_frames - 1) // 4}"
    return DEFAULT_POSE


def strip_data_url(value: str) -> str:
    match = _DATA_URL_RE.match(value)
    return value[match.end():] if match else value


def parse_input(data: Any) -> Union[JobInput, RedecodeInput, HealthInput]:
    """Validate ``job["input"]``; raises :class:`pydantic.ValidationError` (or ``TypeError``)."""
    if not isinstance(data, dict):
        raise TypeError(f"input must be a JSON object, got {type(data).__name__}")
    if "health" in data:
        return HealthInput.model_validate(data)
    if "redecode_from" in data:
        return RedecodeInput.model_validate(data)
    return JobInput.model_validate(data)


def format_validation_error(exc: ValidationError, limit: int = 8) -> str:
    """Summarise pydantic errors as ``field.path: message; ...`` (never echoes input values)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        kind = err.get("type", "")
        msg = err.get("msg", "invalid value")
        if kind == "extra_forbidden":
            msg = "unknown field"
        elif kind == "missing":
            msg = "field required"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        elif msg.startswith("Assertion failed, "):
            msg = msg[len("Assertion failed, "):]
        parts.append(f"{loc}: {msg}" if loc else msg)
    if len(parts) > limit:
        parts = parts[:limit] + [f"... and {len(parts) - limit} more"]
    return "; ".join(parts) or "invalid input"


def json_schemas(part: str = "job") -> dict:
    """JSON Schema (draft 2020-12) built by pydantic, every ``$ref`` resolvable from its root.

    ``part="job"``: a whole job, ``{"input": ...}`` (e.g. test_input.json), with ``$defs/Input``
    (``job["input"]``: a request or a health check) and ``$defs/Output`` (what a job returns);
    ``"input"`` / ``"output"``: just that half, as a root schema.
    """
    from pydantic.json_schema import models_json_schema

    inputs = [(JobInput, "validation"), (RedecodeInput, "validation"), (HealthInput, "validation")]
    outputs = [(JobOutput, "serialization"), (HealthOutput, "serialization"),
               (ErrorOutput, "serialization")]
    if part not in ("job", "input", "output"):
        raise ValueError(f"part must be job, input or output, got {part!r}")
    chosen = {"job": inputs + outputs, "input": inputs, "output": outputs}[part]
    refs, doc = models_json_schema(chosen, by_alias=True)
    defs = doc["$defs"]
    if part != "output":
        defs["Input"] = {"title": "Input", "description": 'job["input"]: a generation request, a '
                                                         "saved world decoded again or a health check.",
                         "anyOf": [refs[item] for item in inputs]}
    if part != "input":
        defs["Output"] = {"title": "Output", "description": "What a job returns.",
                          "anyOf": [refs[item] for item in outputs]}
    root: Dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    if part == "job":
        root.update(title="WorldPlay worker job",
                    description='A job as sent to /run or /runsync: {"input": ...}. '
                                "#/$defs/Input is job[\"input\"], #/$defs/Output the output.",
                    type="object", properties={"input": {"$ref": "#/$defs/Input"}},
                    required=["input"])
    else:
        root["$ref"] = f"#/$defs/{part.capitalize()}"
    root["$defs"] = defs
    return root
