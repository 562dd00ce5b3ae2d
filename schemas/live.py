"""The live socket's messages (``WS /session``, docs/LIVE.md): pydantic v2, strict like the jobs.

Client -> server messages are JSON text frames told apart by ``type``; :func:`parse_client_message`
checks the frame's size first (``MAX_OPEN_MESSAGE_BYTES`` for ``open``, which may carry an image,
``MAX_MESSAGE_BYTES`` for the rest), then the JSON, then the schema. Server -> client messages are
built from the models below so `python -m schemas --part live` documents both directions.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from schemas.job import (
    DEFAULT_KEY_PREFIX,
    MAX_BASE64_CHARS,
    MAX_KEY_CHARS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_URL_CHARS,
    format_validation_error,
)

LIVE_KEYS = ("w", "s", "a", "d", "up", "down", "left", "right")
_OPPOSITE = (("w", "s"), ("a", "d"), ("up", "down"), ("left", "right"))
MAX_MESSAGE_BYTES = 64 * 1024  # any message but open
MAX_OPEN_MESSAGE_BYTES = MAX_BASE64_CHARS + 64 * 1024  # open may carry image_base64 (7 MB decoded)
MAX_TOKEN_CHARS = 512
MAX_SPEED = 1.0
MAX_DEGREES = 30.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class OpenMessage(_Strict):
    """The first message: opens the world (a new one from an image, or a saved one)."""

    type: Literal["open"]
    prompt: Optional[str] = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS,
                                  description="Required for a new world; continue_from defaults to the "
                                              "state's prompt.")
    image_base64: Optional[str] = Field(None, min_length=1, max_length=MAX_BASE64_CHARS)
    image_url: Optional[str] = Field(None, min_length=1, max_length=MAX_URL_CHARS,
                                     description="http(s), public addresses only (as jobs).")
    image_key: Optional[str] = Field(None, min_length=1, max_length=MAX_KEY_CHARS)
    continue_from: Optional[str] = Field(None, min_length=1, max_length=MAX_KEY_CHARS,
                                         description="A state_key (a job's or a live world's).")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="Random when omitted.")
    negative_prompt: Optional[str] = Field(None, max_length=MAX_PROMPT_CHARS)
    mode: Literal["ar", "bidirectional"] = Field(
        "ar", description="Live worlds are AR; bidirectional is refused (MODE_UNAVAILABLE).")
    drive: Literal["step", "continuous"] = "step"
    decoder: Optional[Literal["fast", "full"]] = Field(
        None, description="Which decoder streams the frames: fast (TAEHV; MODEL_UNAVAILABLE on a server without "
                          "its weights) or full (the VAE). Omitted: the server's WORLDPLAY_LIVE_DECODER (fast "
                          "when loaded). The saved state holds latents either way.")
    key_prefix: str = Field(DEFAULT_KEY_PREFIX, min_length=1, max_length=256,
                            pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-/]*$",
                            description="The state and recording go to {key_prefix}/{session_id}/.")
    presign_expiry_seconds: int = Field(3600, ge=60, le=604800)
    token: Optional[str] = Field(None, max_length=MAX_TOKEN_CHARS,
                                 description="Self-hosted auth (WORLDPLAY_LIVE_TOKEN), when not given "
                                             "as Authorization: Bearer or ?token=.")

    @model_validator(mode="after")
    def _one_source(self) -> "OpenMessage":
        sources = [n for n in ("image_base64", "image_url", "image_key", "continue_from")
                   if getattr(self, n) is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of image_base64, image_url, image_key or continue_from"
                             + (f" (got {', '.join(sources)})" if sources else ""))
        if self.continue_from is None and self.prompt is None:
            raise ValueError("prompt is required for a new world")
        if ".." in self.key_prefix.split("/"):
            raise ValueError("key_prefix must not contain '..' segments")
        return self


class ActionsMessage(_Strict):
    """Step mode: render the next chunk with these; continuous mode: the keys held from now on."""

    type: Literal["actions"]
    keys: List[Literal[LIVE_KEYS]] = Field(default_factory=list, max_length=4,  # type: ignore[valid-type]
                                           description="May be empty: stand still.")
    speed: Optional[float] = Field(None, gt=0, le=MAX_SPEED, description="With w/s/a/d held "
                                   "(scene units per latent; default 0.08).")
    degrees: Optional[float] = Field(None, gt=0, le=MAX_DEGREES, description="With a turn key held "
                                     "(per latent; default 3).")

    @model_validator(mode="after")
    def _keys(self) -> "ActionsMessage":
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("keys repeat")
        for a, b in _OPPOSITE:
            if a in self.keys and b in self.keys:
                raise ValueError(f"keys {a!r} and {b!r} are opposite")
        return self


class PromptMessage(_Strict):
    type: Literal["prompt"]
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)


class PauseMessage(_Strict):
    type: Literal["pause"]


class ResumeMessage(_Strict):
    type: Literal["resume"]


class SaveMessage(_Strict):
    type: Literal["save"]


class CloseMessage(_Strict):
    type: Literal["close"]


ClientMessage = Union[OpenMessage, ActionsMessage, PromptMessage, PauseMessage, ResumeMessage,
                      SaveMessage, CloseMessage]
CLIENT_TYPES = ("open", "actions", "prompt", "pause", "resume", "save", "close")
_ADAPTER = TypeAdapter(ClientMessage)
_MODELS = {"open": OpenMessage, "actions": ActionsMessage, "prompt": PromptMessage,
           "pause": PauseMessage, "resume": ResumeMessage, "save": SaveMessage,
           "close": CloseMessage}


class MessageError(ValueError):
    """A client message the server cannot use; ``str()`` names the problem (never echoes values)."""


def parse_client_message(text: Union[str, bytes]) -> ClientMessage:
    """One text frame -> a message model, or :class:`MessageError` naming what is wrong."""
    size = len(text.encode("utf-8") if isinstance(text, str) else text)
    if size > MAX_OPEN_MESSAGE_BYTES:
        raise MessageError(f"message is {size} bytes; the limit is {MAX_OPEN_MESSAGE_BYTES} "
                           f"(open) / {MAX_MESSAGE_BYTES} (other messages)")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"message is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise MessageError(f"message must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind not in _MODELS:
        if not isinstance(kind, str):
            raise MessageError(f"message needs a 'type', one of {', '.join(CLIENT_TYPES)}")
        shown = repr(kind) if len(kind) <= 40 else repr(kind[:40] + "...")
        raise MessageError(f"unknown message type {shown}; use one of {', '.join(CLIENT_TYPES)}")
    if kind != "open" and size > MAX_MESSAGE_BYTES:
        raise MessageError(f"{kind} message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        return _MODELS[kind].model_validate(data)
    except ValidationError as exc:
        raise MessageError(f"{kind}: {format_validation_error(exc)}") from None


# ---- server -> client ------------------------------------------------------------------------
class Limits(BaseModel):
    max_session_latents: int
    idle_seconds: float
    max_seconds: float
    max_queued_actions: int


class ReadyMessage(BaseModel):
    type: Literal["ready"] = "ready"
    session_id: str
    width: int
    height: int
    fps: float
    mime: str = Field(description='MediaSource type, e.g. video/mp4; codecs="avc1.64001e"')
    drive: Literal["step", "continuous"]
    decoder: Literal["fast", "full"] = Field(description="The decoder streaming this world's frames.")
    seed: int
    prompt: str
    num_latents: int = Field(description="Latents of the world so far (0 for a new world).")
    limits: Limits


class ChunkTimings(BaseModel):
    generate: float
    encode: float
    server: float = Field(description="Encode + mux + send: the server's own work on the chunk.")


class ChunkMessage(BaseModel):
    type: Literal["chunk"] = "chunk"
    index: int
    action: Dict[str, Any]
    c2w: List[List[float]]
    position: List[float]
    yaw_degrees: float
    frames: int
    bytes: int
    num_latents: int
    timings: ChunkTimings


class SavedMessage(BaseModel):
    type: Literal["saved"] = "saved"
    state_key: Optional[str]
    session_latents: Optional[int] = None
    state_error: Optional[str] = None


class ClosedMessage(BaseModel):
    type: Literal["closed"] = "closed"
    session_id: str
    reason: str = Field(description="close, idle, max_seconds, session_limit, disconnect, shutdown, error")
    chunks: int
    frames: int
    actions: List[Dict[str, Any]] = Field(description="The equivalent action list (a queue job's actions).")
    seed: int
    state_key: Optional[str] = None
    session_latents: Optional[int] = None
    state_error: Optional[str] = None
    minio_key: Optional[str] = None
    presigned_url: Optional[str] = None
    recording_error: Optional[str] = None


class ErrorMessage(BaseModel):
    type: Literal["error"] = "error"
    code: str
    message: str


SERVER_MODELS = (ReadyMessage, ChunkMessage, SavedMessage, ClosedMessage, ErrorMessage)


def json_schemas() -> dict:
    """JSON Schema of the socket: ``$defs/ClientMessage`` and ``$defs/ServerMessage``."""
    from pydantic.json_schema import models_json_schema

    client = [(m, "validation") for m in _MODELS.values()]
    server = [(m, "serialization") for m in SERVER_MODELS]
    refs, doc = models_json_schema(client + server)
    defs = doc["$defs"]
    defs["ClientMessage"] = {"title": "ClientMessage", "description": "A JSON text frame to WS /session.",
                             "oneOf": [refs[item] for item in client]}
    defs["ServerMessage"] = {"title": "ServerMessage", "description": "A JSON text frame from WS /session "
                             "(media fragments come as binary frames).",
                             "oneOf": [refs[item] for item in server]}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "WorldPlay live socket",
            "$defs": defs}
