"""The inputs of a world, shared by both ways in (the queue job and the live socket).

* the conditioning picture: ``image_base64`` (PNG / JPEG / WebP, size and pixel limits checked before
  decoding), ``image_url`` (:mod:`worker.fetch`: public addresses only) or ``image_key`` (the bucket);
* a job's camera spec: a pose JSON object in the bucket (``pose_key``) or the inline forms, parsed by
  :func:`pipeline.generation.camera.parse_pose` with errors in the units the spec was written in.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
from typing import Any, Callable, Optional

import schemas
from worker.errors import WorkerError

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
)


def _sniff(data: bytes) -> Optional[str]:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_base64_image(value: str) -> bytes:
    body = schemas.strip_data_url(value.strip())
    if body.startswith("data:"):
        raise WorkerError("INVALID_IMAGE", "image_base64 data: URL must be image/png, image/jpeg "
                                           "or image/webp with ;base64")
    compact = "".join(body.split())
    try:
        if "-" in compact or "_" in compact:
            data = base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        else:
            data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise WorkerError("INVALID_IMAGE", "image_base64 is not valid base64") from None
    if len(data) > schemas.MAX_IMAGE_BYTES:
        raise WorkerError("INVALID_IMAGE", f"decoded image is {len(data)} bytes; the limit is "
                                           f"{schemas.MAX_IMAGE_BYTES} bytes")
    return data


def load_image(data: bytes, source: str = "image"):
    """Bytes -> RGB PIL image. PNG/JPEG/WebP only; pixel count checked before decoding."""
    import warnings

    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = schemas.MAX_IMAGE_PIXELS
    if not data:
        raise WorkerError("INVALID_IMAGE", f"{source} is empty")
    fmt = _sniff(data)
    if fmt is None:
        raise WorkerError("INVALID_IMAGE", f"{source} is not a PNG, JPEG or WebP image")
    try:
        with warnings.catch_warnings():
            # 1x..2x the limit only warns in PIL: our own check below rejects it with the size
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
            w, h = img.size
            if w * h > schemas.MAX_IMAGE_PIXELS:
                raise WorkerError("INVALID_IMAGE", f"{source} is {w}x{h} = {w * h / 1e6:.1f} MP; "
                                                   f"the limit is "
                                                   f"{schemas.MAX_IMAGE_PIXELS / 1e6:.0f} MP")
            if min(w, h) < schemas.MIN_IMAGE_SIDE:
                raise WorkerError("INVALID_IMAGE", f"{source} is {w}x{h}; each side must be at "
                                                   f"least {schemas.MIN_IMAGE_SIDE} pixels")
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, rgba)
            return img.convert("RGB")
    except WorkerError:
        raise
    except Image.DecompressionBombError:
        raise WorkerError("INVALID_IMAGE", f"{source} has more pixels than the limit of "
                                           f"{schemas.MAX_IMAGE_PIXELS / 1e6:.0f} MP") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise WorkerError("INVALID_IMAGE", f"{source} could not be decoded as {fmt}: "
                                           f"{type(exc).__name__}") from None


def fetch_image(source: Any, get_storage: Callable[[], Any],
                cancel_event: Optional[threading.Event] = None):
    """The conditioning picture named by `source` (a job input or a live world's open message: one of
    ``image_base64``, ``image_url`` (public addresses only, one deadline, cancellable) or ``image_key``
    (read from the bucket of ``get_storage()``)) as an RGB PIL image, checked like every input."""
    if getattr(source, "image_base64", None) is not None:
        return load_image(decode_base64_image(source.image_base64), "image_base64")
    if getattr(source, "image_url", None) is not None:
        from worker.fetch import fetch_url  # public addresses only, deadline, honours cancel

        return load_image(fetch_url(source.image_url, schemas.MAX_IMAGE_BYTES,
                                    cancel_event=cancel_event), "image_url")
    if getattr(source, "image_key", None) is None:
        raise WorkerError("INVALID_INPUT", "give one of image_base64, image_url or image_key")
    data = get_storage().get_bytes(source.image_key, schemas.MAX_IMAGE_BYTES)
    return load_image(data, f"image_key {source.image_key!r}")


def camera_spec(req: "schemas.JobInput", get_storage: Callable[[], Any]) -> Any:
    """The job's camera spec: the pose JSON object read from the bucket (``pose_key``), or the
    ``pose_json`` / ``actions`` / ``pose`` given inline."""
    if req.pose_key is not None:
        raw = get_storage().get_bytes(req.pose_key, schemas.MAX_POSE_JSON_BYTES)
        try:
            spec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WorkerError("INVALID_POSE", f"pose_key {req.pose_key!r} is not valid JSON: "
                                              f"{type(exc).__name__}") from None
        except RecursionError:
            raise WorkerError("INVALID_POSE", f"pose_key {req.pose_key!r} is nested too deeply"
                              ) from None
        except ValueError:  # an integer past Python's 4,300-digit limit (not a JSONDecodeError)
            raise WorkerError("INVALID_POSE", f"pose_key {req.pose_key!r} holds an integer with "
                                              "too many digits") from None
        if not isinstance(spec, dict):
            raise WorkerError("INVALID_POSE", f"pose_key {req.pose_key!r} must hold a JSON "
                                              f"object, got {type(spec).__name__}")
        return spec
    if req.pose_json is not None:
        return req.pose_json
    if req.actions is not None:
        return req.actions
    return req.pose


def parse_camera(req: "schemas.JobInput", spec: Any):
    """The job's camera path, checked against its frame count and mode (errors in the spec's units)."""
    from pipeline.generation import camera

    num_latents = None
    if req.num_frames is not None:  # checked first, so its error speaks in frames
        num_latents = camera.check_frame_count(req.num_frames, req.rollout)
    # errors in the units the spec was written in (pose string / action moves, pose JSON entries)
    traj = camera.parse_pose(spec, num_latents=num_latents, mode=req.rollout)
    if num_latents is not None and traj.num_latents != num_latents:  # defensive
        raise WorkerError("INVALID_FRAME_COUNT",
                          f"num_frames {req.num_frames} does not match the camera path "
                          f"({traj.num_frames} frames)")
    camera.check_latent_count(traj.num_latents, req.rollout)
    return traj
