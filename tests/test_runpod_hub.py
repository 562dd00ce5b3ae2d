""".runpod/hub.json and .runpod/tests.json: the documented Hub format, settings the worker really
reads, and tests that need no external storage (they run through the handler in test_delivery)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import schemas
from pipeline.settings import env_flag
from worker import delivery
from worker import job as worker_job

REPO = Path(__file__).resolve().parents[1]
HUB = json.loads((REPO / ".runpod" / "hub.json").read_text())
TESTS = json.loads((REPO / ".runpod" / "tests.json").read_text())
ENV = {item["key"]: item for item in HUB["config"]["env"]}

# The fields of an env input in RunPod's Hub publishing guide (string, option, number, boolean,
# huggingface inputs).
INPUT_FIELDS = {"name", "type", "description", "default", "advanced", "options", "min", "max",
                "trueValue", "falseValue"}
INPUT_TYPES = {"string", "number", "boolean", "huggingface"}


def test_hub_json_top_level():
    assert {"title", "description", "type", "category", "config"} <= set(HUB)
    assert HUB["type"] == "serverless" and HUB["category"] == "video"
    config = HUB["config"]
    assert config["runsOn"] == "GPU" and isinstance(config["containerDiskInGb"], int)
    assert isinstance(config["gpuCount"], int) and config["gpuIds"]
    assert "MIT" in HUB["description"] and "Community License" in HUB["description"]


@pytest.mark.parametrize("key", sorted(ENV))
def test_env_entries_follow_the_hub_format(key, monkeypatch):
    item = ENV[key]
    assert set(item) in ({"key", "value"}, {"key", "input"}), item
    if "value" in item:
        assert isinstance(item["value"], str)
        return
    spec = item["input"]
    assert set(spec) <= INPUT_FIELDS, set(spec) - INPUT_FIELDS
    assert spec["type"] in INPUT_TYPES and spec["name"] and spec["description"]
    if spec["type"] == "boolean":
        assert isinstance(spec["default"], bool)
        # what the Hub writes into the environment must parse as the same yes/no in the worker
        for word, expected in ((spec["trueValue"], True), (spec["falseValue"], False)):
            monkeypatch.setenv(key, word)
            assert env_flag(key, None) is expected
    if spec["type"] == "number":
        assert isinstance(spec["default"], int)
        assert spec["min"] <= spec["default"] <= spec["max"]
    if "options" in spec:
        values = [opt["value"] for opt in spec["options"]]
        assert len(set(values)) == len(values) and spec["default"] in values
        assert all(opt["label"] for opt in spec["options"])


def test_models_are_options_the_worker_accepts():
    from pipeline.checkpoints import MODEL_NAMES

    spec = ENV["WORLDPLAY_MODELS"]["input"]
    values = [opt["value"] for opt in spec["options"]]
    assert set(MODEL_NAMES) <= set(values) and spec["default"] == "ar_distilled"
    for value in values:
        assert worker_job.configured_models({"WORLDPLAY_MODELS": value})
    assert worker_job.configured_models({"WORLDPLAY_MODELS": "all"}) == MODEL_NAMES
    for preset in HUB["config"]["presets"]:
        assert set(preset["defaults"]) <= set(ENV)
        assert preset["defaults"]["WORLDPLAY_MODELS"] in values


def test_yes_no_settings_are_boolean_inputs():
    for key in ("WORLDPLAY_ALLOW_DOWNLOAD", "WORLDPLAY_COMPILE"):
        spec = ENV[key]["input"]
        assert spec["type"] == "boolean" and (spec["trueValue"], spec["falseValue"]) == ("1", "0")
    assert ENV["WORLDPLAY_ALLOW_DOWNLOAD"]["input"]["default"] is True


def test_storage_is_optional_and_empty_by_default():
    """With the defaults the worker runs in no-storage mode (every MINIO_* empty), so the Hub's
    own tests pass without a bucket."""
    for key in delivery.STORAGE_VARS:
        spec = ENV[key]["input"]
        assert spec["default"] == "" and spec["type"] == "string"
        assert "Optional" in spec["description"]
    defaults = {key: ENV[key]["input"]["default"] for key in delivery.STORAGE_VARS}
    assert delivery.storage_setup(defaults).mode == "inline"
    cap = ENV[delivery.INLINE_ENV]["input"]
    assert cap["default"] == delivery.DEFAULT_INLINE_MAX_BYTES
    assert cap["max"] * 4 / 3 < 10_000_000  # base64 of the largest allowed video fits a /run result


def test_init_timeout_is_concrete_and_matches_the_deploy_checklist():
    spec = ENV["RUNPOD_INIT_TIMEOUT"]["input"]
    assert spec["type"] == "number" and spec["default"] >= 1800  # ~40 GB first download + load
    assert "40 GB" in spec["description"]
    readme = (REPO / "docs" / "DEPLOY.md").read_text()
    assert f"RUNPOD_INIT_TIMEOUT={spec['default']}" in readme or \
        re.search(rf"`RUNPOD_INIT_TIMEOUT`\s*\|\s*`?{spec['default']}", readme)
    test_env = {item["key"]: item["value"] for item in TESTS["config"]["env"]}
    assert test_env["RUNPOD_INIT_TIMEOUT"] == str(spec["default"])


def test_every_hub_test_outlasts_a_first_workers_cold_start():
    """On a first deploy (route A: no cached model, no volume) any test may be the one that meets a
    fresh worker, which downloads ~40 GB before it answers: each test's timeout covers the whole
    RUNPOD_INIT_TIMEOUT plus the job itself (docs/DEPLOY.md, *The Hub listing's tests*)."""
    init_s = int(ENV["RUNPOD_INIT_TIMEOUT"]["input"]["default"])
    for test in TESTS["tests"]:
        assert test["timeout"] >= (init_s + 300) * 1000, (test["name"], test["timeout"])
    deploy = (REPO / "docs" / "DEPLOY.md").read_text()
    assert "tests.json" in deploy and f"{TESTS['tests'][0]['timeout'] // 60000} minutes" in deploy


def test_tests_json_format_and_inputs():
    assert TESTS["tests"] and {"gpuTypeId", "gpuCount", "env"} <= set(TESTS["config"])
    names = [t["name"] for t in TESTS["tests"]]
    assert len(set(names)) == len(names)
    for test in TESTS["tests"]:
        assert set(test) <= {"name", "input", "timeout"}
        assert isinstance(test["timeout"], int) and test["timeout"] >= 600_000  # milliseconds
        req = schemas.parse_input(test["input"])  # valid per the worker's own schema
        if isinstance(req, schemas.JobInput):
            assert req.image_source == "image_base64"  # self-contained: no bucket, no outside URL
            assert req.camera_source == "pose"
    for item in TESTS["config"]["env"]:
        assert set(item) == {"key", "value"} and isinstance(item["value"], str)
        assert not item["key"].startswith("MINIO_")  # the Hub tests need no external storage
    assert TESTS["tests"][0]["input"] == {"health": True}
    # the first test waits for the first start (download + load): as long as the init timeout
    assert TESTS["tests"][0]["timeout"] >= ENV["RUNPOD_INIT_TIMEOUT"]["input"]["default"] * 1000
