"""Every example in README.md and the docs it links to is valid, and `python -m schemas` is a schema
validators can use.

Examples are taken from the README and docs/ (tests/docs_files.py: USER_DOCS but the live protocol's): every ```json block (a job ``{"input": ...}``, a job's
output, or a /status reply carrying one), every inline `...` span that is JSON (a job, an output,
an action list or a single action) or a quoted pose string, and every ``--pose "..."`` of a
command line. Jobs go through the schema, the camera parser of the worker (in their mode) and
``jsonschema`` against the exported schema; camera examples must render in the default mode (ar).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

import schemas
from pipeline.generation.camera import parse_pose
from worker import job as worker_job

from docs_files import USER_DOCS, read

REPO = Path(__file__).resolve().parents[1]
# the live socket's messages (docs/LIVE.md) are checked by tests/test_live_server.py, not as jobs
README = "\n".join(read(name) for name in USER_DOCS if name != "docs/LIVE.md")
_POSE_STRING = re.compile(r"^\s*[a-zA-Z]+\s*-\s*\d+(\s*,\s*[a-zA-Z]+\s*-\s*\d+)*\s*$")


def _fenced_json_blocks() -> list[str]:
    return re.findall(r"```json\n(.*?)```", README, flags=re.DOTALL)


def _inline_spans() -> list[str]:
    prose = re.sub(r"```.*?```", "", README, flags=re.DOTALL)
    return re.findall(r"`([^`\n]+)`", prose)


def _examples() -> dict[str, list]:
    found: dict[str, list] = {"job": [], "output": [], "actions": [], "pose": []}
    for i, block in enumerate(_fenced_json_blocks()):
        value = json.loads(block)  # a ```json block that is not JSON fails here, by design
        if isinstance(value, dict) and "input" in value:
            found["job"].append(value)
        elif isinstance(value, dict) and "output" in value:  # a /status or /runsync reply
            found["output"].append(value["output"])
        elif isinstance(value, dict):
            found["output"].append(value)
        else:
            raise AssertionError(f"README ```json block {i} is neither a job nor an output")
    for span in _inline_spans():
        try:  # a trailing ", ..." ("and so on") is dropped: `[{"key": "w", ...}, ...]`
            value = json.loads(re.sub(r",\s*\.\.\.\s*(?=[\]}])", "", span))
        except ValueError:
            continue
        if isinstance(value, str):
            if _POSE_STRING.match(value):
                found["pose"].append(value)
        elif isinstance(value, dict) and "input" in value:
            found["job"].append(value)
        elif isinstance(value, dict) and "key" in value:
            found["actions"].append([value])
        elif isinstance(value, list):
            found["actions"].append(value)
        elif isinstance(value, dict) and set(value) & {"error", "minio_key", "status"}:
            found["output"].append(value)
    found["pose"] += re.findall(r'--pose "([^"]+)"', README)
    return found


EXAMPLES = _examples()


@pytest.fixture(scope="module")
def exported_schema() -> dict:
    out = subprocess.run([sys.executable, "-m", "schemas"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    doc = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(doc)
    return doc


def test_the_readme_has_examples_of_every_kind():
    assert len(EXAMPLES["job"]) >= 6  # the Examples section's five + the health check
    assert any("actions" in job["input"] for job in EXAMPLES["job"])
    assert any("pose_json" in job["input"] for job in EXAMPLES["job"])
    assert any(set(job["input"]) == {"prompt", "image_key", "num_frames"} for job in EXAMPLES["job"])
    assert EXAMPLES["output"] and EXAMPLES["actions"] and EXAMPLES["pose"]


@pytest.mark.parametrize("job", EXAMPLES["job"], ids=lambda j: ",".join(sorted(j["input"])))
def test_readme_job_passes_schema_camera_parser_and_json_schema(job, exported_schema):
    jsonschema.validate(job, exported_schema)  # raises on any error, $refs included
    req = schemas.parse_input(job["input"])
    if isinstance(req, (schemas.HealthInput, schemas.RedecodeInput)):  # no camera to parse
        return
    if req.pose_key is None:  # a pose_key example needs the bucket; the rest is parsed here
        trajectory = worker_job.parse_camera(req, worker_job.camera_spec(req, worker_job.get_storage))
        if req.num_frames is not None:
            assert trajectory.num_frames == req.num_frames


@pytest.mark.parametrize("output", EXAMPLES["output"], ids=lambda o: ",".join(sorted(o))[:40])
def test_readme_output_matches_the_output_schema(output, exported_schema):
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/$defs/Output", "$defs": exported_schema["$defs"]})
    assert not list(validator.iter_errors(output))


@pytest.mark.parametrize("actions", EXAMPLES["actions"], ids=lambda a: json.dumps(a)[:40])
def test_readme_action_lists_render_in_the_default_mode(actions, exported_schema):
    parse_pose(actions, mode="ar")
    job = {"input": {"prompt": "p", "image_key": "k", "actions": actions}}
    jsonschema.validate(job, exported_schema)


@pytest.mark.parametrize("pose", EXAMPLES["pose"])
def test_readme_pose_strings_render_in_the_default_mode(pose):
    parse_pose(pose, mode="ar")


def test_test_input_json_validates_against_the_exported_schema(exported_schema):
    job = json.loads((REPO / "test_input.json").read_text())
    jsonschema.validate(job, exported_schema)
    schemas.parse_input(job["input"])


def test_exported_schema_rejects_what_the_worker_rejects(exported_schema):
    validator = jsonschema.Draft202012Validator(exported_schema)
    bad = [
        {"input": {"prompt": "p", "image_key": "k", "sneaky": 1}},  # unknown field
        {"input": {"image_key": "k"}},  # no prompt
        {"input": {"prompt": "p", "image_key": "k", "output": {"presign_expiry_seconds": 5}}},
        {"input": {"prompt": "p", "image_key": "k", "actions": [{"key": "w", "moves": 3,
                                                                   "latents": 3}]}},
        {"input": {"prompt": "p", "image_key": "k", "actions": [{"key": "w", "moves": 0}]}},
        {"prompt": "p"},  # not wrapped in "input"
    ]
    for job in bad:
        assert list(validator.iter_errors(job)), job
    # the legacy image alias and the deprecated action field stay valid
    for job in ({"input": {"prompt": "p", "input_image_minio_path": "k"}},
                {"input": {"prompt": "p", "image_key": "k", "actions": [{"key": "w", "latents": 7}]}}):
        assert not list(validator.iter_errors(job)), job


def test_each_part_is_a_resolvable_root():
    for part, instance in (("input", {"health": True}), ("output", {"error": "INVALID_INPUT: x"})):
        doc = schemas.json_schemas(part)
        jsonschema.Draft202012Validator.check_schema(doc)
        jsonschema.validate(instance, doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"error": 3}, schemas.json_schemas("output"))


def test_python_m_schemas_help_and_part():
    helped = subprocess.run([sys.executable, "-m", "schemas", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "usage: python -m schemas" in helped.stdout
    assert "--part" in helped.stdout and "$defs/Input" in helped.stdout
    part = subprocess.run([sys.executable, "-m", "schemas", "--part", "input"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(part.stdout)["$ref"] == "#/$defs/Input"
