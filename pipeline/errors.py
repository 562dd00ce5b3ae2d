"""Typed errors raised by the model package.

Each carries a stable ``code`` so the worker can turn it into ``{"error": "CODE: message"}``
without string matching. Messages name the fault and never include credentials.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error the model package raises on purpose."""

    code = "PIPELINE_ERROR"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class PoseSpecError(PipelineError, ValueError):
    """A camera specification (pose string, pose JSON or action list) is malformed."""

    code = "INVALID_POSE"


class InvalidArgumentError(PipelineError, ValueError):
    """A command-line argument of the model package's tools is unusable (e.g. ``--out`` in a folder
    that does not exist); the same code as a job input the schema refuses."""

    code = "INVALID_INPUT"


class FrameCountError(PoseSpecError):
    """A latent / frame count violates the mode's rules; the message lists the nearest valid counts."""

    code = "INVALID_FRAME_COUNT"


class ImageError(PipelineError, ValueError):
    """The conditioning image cannot be used (unreadable, too large, wrong format)."""

    code = "INVALID_IMAGE"


class ModelUnavailableError(PipelineError):
    """The request names a model (checkpoint) or a stage (the 720p SR stage, the fast decoder) this worker does
    not hold; the message names what it serves."""

    code = "MODEL_UNAVAILABLE"


class ModelNotFoundError(PipelineError):
    """A required model component is not available locally and downloading is disabled."""

    code = "MODEL_NOT_FOUND"


class ModelDownloadError(PipelineError):
    """Downloading a model component failed (permanent error, or retries exhausted)."""

    code = "MODEL_DOWNLOAD_FAILED"


class CheckpointError(PipelineError):
    """A checkpoint does not match the architecture (missing / unexpected keys, wrong shapes, truncated)."""

    code = "CHECKPOINT_MISMATCH"


class GenerationCancelled(PipelineError):
    """The caller asked to stop between denoising steps."""

    code = "CANCELLED"


class SequenceParallelConfigError(PipelineError):
    """``WORLDPLAY_SEQUENCE_PARALLEL`` cannot be honoured (not a number, does not divide the heads, more
    ranks than visible GPUs)."""

    code = "SEQUENCE_PARALLEL_CONFIG"


class RankFailedError(PipelineError):
    """A sequence-parallel rank died, failed or stopped answering; the worker must be replaced."""

    code = "RANK_FAILED"


class RankZeroFailedError(PipelineError):
    """On a sequence-parallel follower: rank 0 failed while preparing the DiT's inputs (before any of them
    was broadcast) and said so; the ranks stay in step and rank 0 reports its own error."""

    code = "RANK0_FAILED"
    reaches_clients = False  # passed between ranks only: never a job's result


class StateError(PipelineError):
    """A world state (``continue_from``) is not a valid state object: header, tensors, metadata."""

    code = "INVALID_STATE"


class StateNotFoundError(StateError):
    """The world state object named by ``continue_from`` does not exist."""

    code = "STATE_NOT_FOUND"


class StateMismatchError(StateError):
    """A valid world state made by another checkpoint, mode or size than this request can continue."""

    code = "STATE_MISMATCH"


class SessionTooLongError(StateError):
    """A world session would exceed the configured maximum (latents or state bytes)."""

    code = "SESSION_TOO_LONG"
