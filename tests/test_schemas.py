"""The input/output contract (schemas/): defaults, strictness, bounds, clear messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import schemas
from schemas import HealthInput, JobInput, format_validation_error, parse_input

REPO = Path(__file__).resolve().parents[1]
IMG = {"image_key": "inputs/a.png"}


def errors_of(data) -> str:
    with pytest.raises(ValidationError) as info:
        parse_input(data)
    return format_validation_error(info.value)


def test_legacy_request_shape_is_valid_as_is():
    req = parse_input({"prompt": "a castle", "image_base64": "aGVsbG8=", "num_frames": 125,
                       "pose": "w-31", "num_inference_steps": 4})
    assert isinstance(req, JobInput)
    assert (req.num_frames, req.pose, req.steps, req.rollout, req.resolved_model) == (125, "w-31", 4, "ar", "ar_distilled")
    assert req.image_source == "image_base64" and req.camera_source == "pose"


def test_defaults_per_mode():
    ar = parse_input({"prompt": "p", **IMG})
    assert ar.pose == "w-31" and ar.camera_source == "pose"
    assert (ar.steps, ar.guidance, ar.fps, ar.seed) == (4, 1.0, 24, None)
    assert ar.output.key_prefix == "worldplay" and ar.output.presign_expiry_seconds == 3600
    bi = parse_input({"prompt": "p", "mode": "bidirectional", **IMG})
    assert (bi.steps, bi.guidance) == (50, 6.0)  # upstream's published default (hyvideo/generate.py)
    explicit = parse_input({"prompt": "p", "mode": "bidirectional", "num_inference_steps": 12,
                            "guidance_scale": 3, **IMG})
    assert (explicit.steps, explicit.guidance) == (12, 3.0)


def test_prompt_is_stripped_and_required():
    assert parse_input({"prompt": "  hi  ", **IMG}).prompt == "hi"
    assert "prompt: field required" in errors_of(IMG)
    assert "prompt must not be empty" in errors_of({"prompt": "   ", **IMG})
    assert "at most 2000 characters" in errors_of({"prompt": "x" * 2001, **IMG})


def test_image_key_alias():
    req = parse_input({"prompt": "p", "input_image_minio_path": "in/x.png"})
    assert req.image_key == "in/x.png" and req.image_source == "image_key"
    msg = errors_of({"prompt": "p", "image_key": "a", "input_image_minio_path": "b"})
    assert "not both" in msg


@pytest.mark.parametrize("images, given", [
    ({}, "none"),
    ({"image_key": "a.png", "image_url": "https://x/a.png"}, "image_key, image_url"),
    ({"image_url": "https://x/a.png", "image_base64": "aGk="}, "image_url, image_base64"),
])
def test_exactly_one_image_source(images, given):
    msg = errors_of({"prompt": "p", **images})
    assert "exactly one of image_key" in msg and f"given: {given}" in msg


def test_at_most_one_camera_source():
    msg = errors_of({"prompt": "p", **IMG, "pose": "w-3", "actions": [{"key": "w"}]})
    assert "at most one of pose, pose_key, pose_json, actions" in msg and "pose, actions" in msg
    for camera in ({"pose_key": "p.json"}, {"pose_json": {"0": {}}},
                   {"actions": [{"key": "w", "latents": 4}]}):
        req = parse_input({"prompt": "p", **IMG, **camera})
        assert req.camera_source == next(iter(camera)) and req.pose is None


def test_unknown_fields_are_rejected_by_name():
    msg = errors_of({"prompt": "p", **IMG, "num_frame": 125, "output": {"bucket": "x"}})
    assert "num_frame: unknown field" in msg
    assert "output.bucket: unknown field" in msg


@pytest.mark.parametrize("field, value", [
    ("seed", True), ("num_frames", True), ("fps", False), ("num_inference_steps", True),
    ("guidance_scale", True), ("seed", "42"), ("fps", "24"), ("num_frames", "125"),
    ("guidance_scale", "1.5"), ("num_inference_steps", 4.0), ("seed", 1.5), ("prompt", 5),
    ("mode", "AR"), ("pose", ["w-3"]),
])
def test_no_silent_coercion(field, value):
    data = {"prompt": "p", **IMG, field: value}
    msg = errors_of(data)
    assert msg.startswith(f"{field}:")


@pytest.mark.parametrize("field, value, fragment", [
    ("num_inference_steps", 0, "greater than or equal to 1"),
    ("num_inference_steps", 101, "less than or equal to 100"),
    ("guidance_scale", 0.5, "greater than or equal to 1"),
    ("guidance_scale", 20.5, "less than or equal to 20"),
    ("fps", 0, "greater than or equal to 1"),
    ("fps", 61, "less than or equal to 60"),
    ("seed", -1, "greater than or equal to 0"),
    ("seed", 2**32, "less than or equal to"),
    ("num_frames", 0, "greater than or equal to 1"),
    ("num_frames", 5000, "less than or equal to"),
    ("negative_prompt", "n" * 2001, "at most 2000 characters"),
    ("pose", " ", "pose must not be empty"),
    ("pose_json", {}, "pose_json must not be empty"),
    ("actions", [], "at least 1 item"),
])
def test_bounds(field, value, fragment):
    msg = errors_of({"prompt": "p", **IMG, field: value})
    assert msg.startswith(f"{field}:") and fragment in msg, msg


def test_seed_and_guidance_accept_valid_extremes():
    req = parse_input({"prompt": "p", **IMG, "seed": 2**32 - 1, "guidance_scale": 20,
                       "num_inference_steps": 100, "fps": 60})
    assert req.seed == 2**32 - 1 and req.guidance == 20.0


@pytest.mark.parametrize("url", ["ftp://host/a.png", "file:///etc/passwd", "javascript:alert(1)",
                                 "//host/a.png", "http://host/a b.png"])
def test_image_url_must_be_http(url):
    assert errors_of({"prompt": "p", "image_url": url}).startswith("image_url:")


def test_image_url_ok():
    assert parse_input({"prompt": "p", "image_url": "HTTPS://example.com/a.png?x=1"}).image_url


@pytest.mark.parametrize("key", ["../secret.png", "a/../../b", "/abs.png", "", "a\x00b"])
def test_object_keys_are_checked(key):
    msg = errors_of({"prompt": "p", "image_key": key})
    assert msg.startswith("image_key:")
    assert errors_of({"prompt": "p", **IMG, "pose_key": key}).startswith("pose_key:")


def test_image_base64_size_bound_and_data_url():
    from schemas.job import MAX_BASE64_CHARS, MAX_IMAGE_BYTES

    too_big = "A" * (MAX_IMAGE_BYTES // 3 * 4 + 8)
    msg = errors_of({"prompt": "p", "image_base64": too_big})
    assert msg.startswith("image_base64:") and "limit is 7 MB" in msg
    assert "A" * 50 not in msg  # the value itself is never echoed
    over_cap = "A" * (MAX_BASE64_CHARS + 1)
    assert errors_of({"prompt": "p", "image_base64": over_cap}).startswith("image_base64:")
    ok = parse_input({"prompt": "p", "image_base64": "data:image/png;base64,aGVsbG8="})
    assert schemas.strip_data_url(ok.image_base64) == "aGVsbG8="


@pytest.mark.parametrize("prefix, ok", [
    ("renders", "renders"), ("team-a/run_1.v2", "team-a/run_1.v2"), ("/lead/", "lead"),
    ("../x", None), ("a//b", None), ("a/./b", None), ("sp ace", None), ("é", None), ("-x", None),
])
def test_output_key_prefix(prefix, ok):
    data = {"prompt": "p", **IMG, "output": {"key_prefix": prefix}}
    if ok is None:
        assert errors_of(data).startswith("output.key_prefix:")
    else:
        assert parse_input(data).output.key_prefix == ok


@pytest.mark.parametrize("expiry, ok", [(59, False), (60, True), (604800, True), (604801, False),
                                        (True, False), ("3600", False)])
def test_presign_expiry_bounds(expiry, ok):
    data = {"prompt": "p", **IMG, "output": {"presign_expiry_seconds": expiry}}
    if ok:
        assert parse_input(data).output.presign_expiry_seconds == expiry
    else:
        assert errors_of(data).startswith("output.presign_expiry_seconds:")


def test_health_shape():
    assert isinstance(parse_input({"health": True}), HealthInput)
    assert errors_of({"health": 1}).startswith("health:")
    assert "health must be true" in errors_of({"health": False})
    assert "prompt: unknown field" in errors_of({"health": True, "prompt": "p"})


def test_input_must_be_an_object():
    for bad in (None, [], "prompt", 3):
        with pytest.raises(TypeError, match="input must be a JSON object"):
            parse_input(bad)


def test_error_summary_never_echoes_values():
    secret = "do-not-echo-this-value"
    msg = errors_of({"prompt": "p", **IMG, "seed": secret, "fps": secret, secret: 1})
    assert msg.count(secret) == 1  # only as the *name* of the unknown field
    assert f"{secret}: unknown field" in msg


def test_summary_is_log_safe():
    req = parse_input({"prompt": "secret prompt text", "image_base64": "aGVsbG8=" * 10})
    text = json.dumps(req.summary())
    assert "aGVsbG8" not in text and "secret prompt" not in text


def test_python_m_schemas_prints_both_schemas():
    out = subprocess.run([sys.executable, "-m", "schemas"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    doc = json.loads(out)
    # the root describes a whole job; the halves sit in the root's $defs (every $ref resolves)
    assert doc["properties"]["input"] == {"$ref": "#/$defs/Input"} and doc["required"] == ["input"]
    defs = doc["$defs"]
    job_schema, health_schema = defs["JobInput"], defs["HealthInput"]
    assert [r["$ref"] for r in defs["Input"]["anyOf"]] == ["#/$defs/JobInput", "#/$defs/RedecodeInput",
                                                         "#/$defs/HealthInput"]
    redecode = defs["RedecodeInput"]
    assert redecode["required"] == ["redecode_from"] and redecode["additionalProperties"] is False
    assert set(redecode["properties"]) == {"redecode_from", "decoder", "fps", "output"}
    assert "prompt" in job_schema["properties"] and job_schema["additionalProperties"] is False
    # prompt is required unless continue_from names a world state (checked by the model, not the schema)
    assert "required" not in job_schema and "continue_from" in job_schema["properties"]
    assert job_schema["anyOf"] == [{"required": ["prompt"]}, {"required": ["continue_from"]}]
    assert "health" in health_schema["properties"]
    assert {r["$ref"] for r in defs["Output"]["anyOf"]} == {
        "#/$defs/JobOutput", "#/$defs/HealthOutput", "#/$defs/ErrorOutput"}
    timings = defs["Timings"]["properties"]
    assert "validate" in timings and "presigned_url" in defs["JobOutput"]["properties"]


def test_continuation_requests():
    req = parse_input({"continue_from": "worldplay/job-1/world.safetensors", "pose": "w-8"})
    assert req.prompt is None and req.continue_from.endswith("world.safetensors")
    assert req.output.save_state is True
    assert parse_input({"continue_from": "a/world.safetensors"}).pose == "w-32"
    assert parse_input({"continue_from": "a/world.safetensors", "num_frames": 64}).pose == "w-16"
    assert "takes no image" in errors_of({"continue_from": "a/world.safetensors", **IMG})
    assert "'..'" in errors_of({"continue_from": "a/../b"})
    assert "prompt: field required" in errors_of({"pose": "w-8", **IMG})
    off = parse_input({"prompt": "p", **IMG, "output": {"save_state": False}})
    assert off.output.save_state is False
    assert "save_state" in errors_of({"prompt": "p", **IMG, "output": {"save_state": "no"}})


def test_redecode_requests():
    req = parse_input({"redecode_from": "worldplay/live-1/world.safetensors"})
    assert (req.decoder, req.fps, req.output.preview) == ("full", 24, True)
    assert parse_input({"redecode_from": "a/world.safetensors", "decoder": "fast", "fps": 30}).decoder == "fast"
    assert "'..'" in errors_of({"redecode_from": "a/../b"})
    assert "pose: unknown field" in errors_of({"redecode_from": "a/world.safetensors", "pose": "w-3"})
    assert "decoder" in errors_of({"redecode_from": "a/world.safetensors", "decoder": "tiny"})


# ---- models by name ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, steps, guidance, rollout", [
    ("ar_distilled", 4, 1.0, "ar"), ("ar", 50, 6.0, "ar"), ("ar_rl", 50, 6.0, "ar"),
    ("bidirectional", 50, 6.0, "bidirectional")])
def test_each_model_has_its_published_defaults(model, steps, guidance, rollout):
    req = parse_input({"prompt": "p", "model": model, **IMG})
    assert (req.resolved_model, req.steps, req.guidance, req.rollout) == (model, steps, guidance, rollout)
    assert req.summary()["model"] == model


@pytest.mark.parametrize("mode, model", [("ar", "ar_distilled"), ("bidirectional", "bidirectional")])
def test_mode_is_an_alias_of_model(mode, model):
    by_mode = parse_input({"prompt": "p", "mode": mode, **IMG})
    both = parse_input({"prompt": "p", "mode": mode, "model": model, **IMG})
    assert by_mode.resolved_model == both.resolved_model == model and by_mode.model_named


@pytest.mark.parametrize("mode, model", [("ar", "ar"), ("ar", "ar_rl"), ("ar", "bidirectional"),
                                         ("bidirectional", "ar_distilled")])
def test_mode_and_model_that_disagree_are_invalid(mode, model):
    with pytest.raises(ValidationError, match="give model only"):
        parse_input({"prompt": "p", "mode": mode, "model": model, **IMG})


def test_unknown_model_is_invalid():
    with pytest.raises(ValidationError) as exc:
        parse_input({"prompt": "p", "model": "ar_turbo", **IMG})
    assert "ar_distilled" in format_validation_error(exc.value)
