"""Property-based fuzzing of every parser a client reaches (hypothesis, derandomized: CI is repeatable).

A client controls the job's JSON (``job["input"]``), objects in the bucket it names (``pose_key``,
``continue_from``) and whatever those hold. Whatever it sends, the worker must answer with a coded
input error (``INVALID_POSE``, ``INVALID_STATE``, ...) and never a worker fault: never
``INTERNAL_ERROR``, never ``refresh_worker`` (a fault recycles the worker, so a client could recycle
workers at will). The strategies favour the inputs that broke parsers before: integers of more than
4,300 digits (Python's int <-> str conversion limit), floats beyond float64, NaN / infinity, unicode
digits, deep nesting, wrong types in every field.
"""

from __future__ import annotations

import json
import struct
import threading

import pytest
from conftest import b64, png_bytes, small_world_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from pipeline.errors import PipelineError, PoseSpecError, StateError
from pipeline.generation.camera import CameraTrajectory, continue_pose, parse_pose
from pipeline.generation.world_state import WorldState
from worker import job as worker_job
from worker.errors import ERROR_CODES

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
FEW = settings(FUZZ, max_examples=60)  # the properties that cost a job or an S3 round trip each

WORKER_FAULTS = {code for code, (refresh, _) in ERROR_CODES.items() if refresh}
BIG_DIGITS = 5000  # past Python's 4,300-digit int <-> str limit
BIG = 10 ** BIG_DIGITS - 1  # made arithmetically: int("9" * 5000) would itself raise

# ---- strategies ---------------------------------------------------------------------------------
HUGE = (BIG, -BIG, 2 ** 64, -(2 ** 63) - 1, 10 ** 309, 2 ** 31, -1, 0)
huge_ints = st.integers(0, len(HUGE) - 1).map(HUGE.__getitem__)  # sampled_from would repr() them
numbers = st.one_of(st.integers(-10 ** 6, 10 ** 6), huge_ints,
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e-320, 0.5]))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=20)


def matrices(rows: int, cols: int):
    """Near-valid matrices: the right shape with fuzzed entries, or any JSON value."""
    row = st.lists(st.one_of(numbers, scalars), min_size=cols, max_size=cols)
    return st.one_of(st.lists(row, min_size=rows, max_size=rows),
                     st.lists(st.lists(numbers, max_size=cols + 1), max_size=rows + 1), json_values)


IDENTITY = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
K = [[969.7, 0.0, 960.0], [0.0, 969.7, 540.0], [0.0, 0.0, 1.0]]
pose_keys = st.one_of(st.integers(0, 40).map(str), st.sampled_from(["-1", "01", "1.5", "x", "٣", "9" * 60]),
                      st.text(max_size=6))
pose_entries = st.fixed_dictionaries({}, optional={"extrinsic": st.one_of(st.just(IDENTITY), matrices(4, 4)),
                                                   "K": st.one_of(st.just(K), matrices(3, 3)),
                                                   "extra": json_values})
pose_dicts = st.one_of(
    st.dictionaries(pose_keys, st.one_of(pose_entries, json_values), max_size=6),
    # well-formed apart from one entry: reaches the deeper checks
    st.integers(1, 8).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1), pose_entries)).map(
        lambda t: {str(i): (t[2] if i == t[1] else {"extrinsic": IDENTITY, "K": K}) for i in range(t[0])}),
)
keys = st.sampled_from(["w", "s", "a", "d", "up", "down", "left", "right", "w+left", "W", "w+s", "x", "", "w+w"])
counts = st.one_of(st.integers(-3, 300).map(str), st.sampled_from(["9" * BIG_DIGITS, "+0007", "٣", "1e3", "0x10",
                                                                   "9" * 8, "- 4", "-4", " 4 ", ""]),
                   st.text(max_size=5))
pose_strings = st.one_of(
    st.lists(st.tuples(keys, st.sampled_from(["-", " - ", "--", "", "_"]), counts).map("".join),
             min_size=1, max_size=5).map(lambda parts: ", ".join(parts)),
    st.text(max_size=40),
)
action_items = st.one_of(
    st.fixed_dictionaries({"key": st.one_of(keys, scalars)},
                          optional={"moves": st.one_of(numbers, scalars), "latents": st.one_of(numbers, scalars),
                                    "speed": st.one_of(numbers, scalars), "degrees": st.one_of(numbers, scalars),
                                    "extra": scalars}),
    json_values,
)
action_lists = st.lists(action_items, max_size=5)


MARKER = "__BIG_NUMBER__"


def marked(value):
    """``value`` with every huge int replaced by MARKER: json.dumps cannot write such an int (its
    str() raises), so the dumped text gets 5,000-digit literals in their place (:func:`dumps`)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 18:
        return MARKER
    if isinstance(value, dict):
        return {k: marked(v) for k, v in value.items()}
    return [marked(v) for v in value] if isinstance(value, list) else value


def dumps(value, big: bool = True) -> str:
    text = json.dumps(marked(value), allow_nan=True, default=str)
    return text.replace(json.dumps(MARKER), "9" * BIG_DIGITS) if big else text


def json_text(value_strategy):
    """JSON text of a value, with some numbers written as 5,000-digit literals (json.dumps cannot
    write such an int itself, and json.loads raises ValueError, not JSONDecodeError, reading one)."""
    def dump(args):
        value, big = args
        text = dumps(value, big)
        return text.replace("0.5", "1" + "0" * BIG_DIGITS) if big else text  # and a float past float64

    return st.tuples(st.recursive(st.one_of(value_strategy, st.just(MARKER)),
                                  lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(pose_keys, inner, max_size=3)),
                                  max_leaves=6),
                     st.booleans()).map(dump)


camera_specs = st.one_of(pose_strings, pose_dicts, action_lists, json_text(st.one_of(pose_entries, action_items)),
                         json_text(pose_dicts), scalars)


def assert_pose_outcome(call):
    """A trajectory, or an INVALID_POSE / INVALID_FRAME_COUNT error; nothing else."""
    try:
        result = call()
    except PoseSpecError as exc:  # FrameCountError is a PoseSpecError
        assert exc.code in ("INVALID_POSE", "INVALID_FRAME_COUNT")
        assert str(exc) and len(str(exc)) < 10_000
        return None
    assert isinstance(result, CameraTrajectory)
    return result


# ---- the camera grammar ---------------------------------------------------------------------------
@FUZZ
@given(spec=camera_specs, mode=st.sampled_from([None, "ar", "bidirectional"]),
       num_latents=st.sampled_from([None, 4, 5, 32]))
def test_parse_pose_answers_every_spec_with_a_pose_error(spec, mode, num_latents):
    assert_pose_outcome(lambda: parse_pose(spec, num_latents=num_latents, mode=mode))


@FUZZ
@given(spec=camera_specs)
def test_continue_pose_answers_every_spec_with_a_pose_error(spec):
    import numpy as np

    assert_pose_outcome(lambda: continue_pose(spec, np.eye(4)))


def test_huge_integers_are_pose_errors():
    """The examples the fuzzer first found, kept as plain cases."""
    big = "9" * BIG_DIGITS
    for spec in (f'{{"0": {{"extrinsic": [[{big}, 0, 0, 0]], "K": []}}}}', f"[{{\"key\": \"w\", \"moves\": {big}}}]",
                 [{"key": "w", "moves": BIG}], [{"key": "w", "moves": -BIG}], [{"key": "w", "moves": 3, "speed": BIG}],
                 [{"key": "left", "moves": 3, "degrees": -BIG}], f"w-{big}", {"9" * 40: {}},
                 {"0": {"extrinsic": [[BIG] * 4] * 4, "K": K}}):
        with pytest.raises(PoseSpecError):
            parse_pose(spec)


# ---- the job schema --------------------------------------------------------------------------------
PNG64 = b64(png_bytes(64, 48))
FIELDS = {
    "prompt": st.one_of(st.just("a quiet harbour"), st.text(max_size=20), scalars),
    "negative_prompt": st.one_of(st.text(max_size=10), scalars),
    "image_base64": st.one_of(st.just(PNG64), st.text(max_size=30), st.just("data:image/png;base64,!!"), scalars),
    # refused without a DNS lookup or a connection (schema, scheme, literal non-public addresses)
    "image_url": st.sampled_from(["http://127.0.0.1/a.png", "ftp://x/y", "http://[::1]:80/", "not a url",
                                  "http://10.0.0.1:99999/", "http://[64:ff9b::a00:1]/", "https://", 5, None]),
    "image_key": st.one_of(st.text(max_size=10), scalars),
    "pose": st.one_of(pose_strings, json_text(pose_entries), scalars),
    "pose_json": st.one_of(pose_dicts, json_values),
    "actions": st.one_of(action_lists, json_values),
    "pose_key": st.one_of(st.text(max_size=10), scalars),
    "mode": st.one_of(st.sampled_from(["ar", "bidirectional", "AR"]), scalars),
    "num_frames": st.one_of(st.sampled_from([13, 29, 61, 125]), numbers, scalars),
    "num_inference_steps": st.one_of(numbers, scalars),
    "guidance_scale": st.one_of(numbers, scalars),
    "seed": st.one_of(numbers, scalars),
    "fps": st.one_of(numbers, scalars),
    "output": st.one_of(st.fixed_dictionaries({}, optional={"key_prefix": st.one_of(st.text(max_size=8), scalars),
                                                            "save_state": scalars, "preview": scalars,
                                                            "presign_expiry_seconds": numbers}), json_values),
    "continue_from": st.one_of(st.text(max_size=10), scalars),
    "decoder": st.one_of(st.sampled_from(["full", "fast", "FAST"]), scalars),
    "redecode_from": st.one_of(st.text(max_size=10), scalars),
    "health": scalars,
    "unknown_field": json_values,
}
camera_fields = st.one_of(
    pose_strings.filter(lambda t: t.strip()).map(lambda t: {"pose": t[:4000]}),
    json_text(st.one_of(pose_entries, action_items)).filter(lambda t: len(t) <= 4000).map(lambda t: {"pose": t}),
    pose_dicts.filter(bool).map(lambda d: {"pose_json": d}),
    st.lists(action_items, min_size=1, max_size=5).map(lambda a: {"actions": a}),
    st.just({}),
)
# well-formed jobs apart from the camera (and a length / mode): they get past the schema to the parsers
near_valid_jobs = st.builds(
    lambda camera, extra: {"prompt": "a quiet harbour", "image_base64": PNG64, **camera, **extra},
    camera_fields,
    st.fixed_dictionaries({}, optional={"num_frames": st.sampled_from([13, 29, 61, 125, 14, 1, 1021]),
                                        "mode": st.sampled_from(["ar", "bidirectional"]),
                                        "seed": st.integers(0, 2 ** 31 - 1)}))
job_inputs = st.one_of(near_valid_jobs, near_valid_jobs,st.fixed_dictionaries({"prompt": FIELDS["prompt"], "image_base64": FIELDS["image_base64"]},
                                             optional={k: v for k, v in FIELDS.items()
                                                       if k not in ("prompt", "image_base64")}),
                       st.fixed_dictionaries({}, optional=FIELDS), json_values)


@FUZZ
@given(data=job_inputs)
def test_the_schema_answers_every_input_with_a_validation_error(data):
    from pydantic import ValidationError

    try:
        parsed = schemas.parse_input(data)
    except ValidationError as exc:
        message = schemas.format_validation_error(exc)  # never raises, never echoes a value
        assert message and len(message) < 5000
        return
    except TypeError as exc:
        assert "input must be a JSON object" in str(exc)
        return
    assert isinstance(parsed, (schemas.JobInput, schemas.RedecodeInput, schemas.HealthInput))
    parsed.model_dump()  # the summary the job logs must not fail either
    if not isinstance(parsed, schemas.HealthInput):
        json.dumps(parsed.summary())


@pytest.fixture
def no_storage(monkeypatch, tmp_path):
    """Inline mode (no MINIO_*), AR served, no model: the run stops at the cancel flag after the inputs."""
    for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLDPLAY_MODES", "ar,bidirectional")
    monkeypatch.setenv("WORLDPLAY_TMPDIR", str(tmp_path))
    saved = worker_job.MODELS.loader

    def loader(modes):
        raise AssertionError("the fuzzed jobs never get to the model")

    worker_job.reset_state(loader=loader)
    yield
    worker_job.reset_state(loader=saved)


def assert_client_error(out: dict) -> str:
    assert set(out) == {"error"}, out  # no refresh_worker: the worker stays
    code = out["error"].split(":", 1)[0]
    assert code in ERROR_CODES and code not in WORKER_FAULTS, out
    return code


@FEW
@given(data=job_inputs)
def test_run_job_answers_every_input_with_a_client_error(no_storage, data):
    """validate -> camera -> image, then the cancel flag stops the job before the model: every answer
    is an input error or CANCELLED (the input was fine)."""
    cancelled = threading.Event()
    cancelled.set()
    out = worker_job.run_job({"id": "fuzz", "input": data}, cancel_event=cancelled)
    assert_client_error(out)


def test_run_job_huge_integers_in_the_job_json(no_storage):
    cancelled = threading.Event()
    cancelled.set()
    base = {"prompt": "a quiet harbour", "image_base64": PNG64}
    for extra, code in (({"actions": [{"key": "w", "moves": BIG}]}, "INVALID_FRAME_COUNT"),
                        ({"actions": [{"key": "w", "moves": 3, "speed": BIG}]}, "INVALID_POSE"),
                        ({"pose_json": {"0": {"extrinsic": [[BIG] * 4] * 4, "K": K}}}, "INVALID_POSE"),
                        ({"pose": f'[{{"key": "w", "moves": {"9" * BIG_DIGITS}}}]'}, "INVALID_INPUT"),  # > 4000 chars
                        ({"pose": "w-3", "seed": BIG}, "INVALID_INPUT"),
                        ({"pose": "w-3", "num_frames": -BIG}, "INVALID_INPUT")):
        out = worker_job.run_job({"id": "big", "input": {**base, **extra}}, cancel_event=cancelled)
        assert assert_client_error(out) == code, (extra, out)


# ---- pose_key: a JSON object in the bucket -----------------------------------------------------------
pose_objects = st.one_of(json_text(st.one_of(pose_entries, pose_dicts)), st.binary(max_size=300).map(
    lambda b: b.decode("latin-1")), st.sampled_from([
        "{\"0\": " + "9" * BIG_DIGITS + "}", "[" * 100_000, "{\"0\": 1e999}", "\ufeff{}", "{\"0\": -0}"]))


@FEW
@given(text=pose_objects)
def test_pose_key_objects_answer_with_a_pose_error(s3_env, storage, text):
    storage.put_bytes("fuzz/pose.json", text.encode("utf-8", "surrogatepass"))
    cancelled = threading.Event()
    cancelled.set()
    out = worker_job.run_job({"id": "fuzz-pose", "input": {"prompt": "a harbour", "image_base64": PNG64,
                                                            "pose_key": "fuzz/pose.json"}},
                             cancel_event=cancelled)
    code = assert_client_error(out)
    assert code in ("INVALID_POSE", "INVALID_FRAME_COUNT", "CANCELLED"), out


def test_pose_key_with_a_huge_integer_is_invalid_pose(s3_env, storage):
    """The report of issue 20: 5,000 digits in a bucket object answered INTERNAL_ERROR + refresh_worker."""
    storage.put_bytes("in/pose.json", ('{"0": {"extrinsic": ' + "9" * BIG_DIGITS + ', "K": []}}').encode())
    out = worker_job.run_job({"id": "big-pose", "input": {"prompt": "a harbour", "image_base64": PNG64,
                                                           "pose_key": "in/pose.json"}})
    assert assert_client_error(out) == "INVALID_POSE" and "in/pose.json" in out["error"]


# ---- world-state files --------------------------------------------------------------------------------
STATE = small_world_state().to_bytes()


def split_state(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def join_state(header_text: str, body: bytes) -> bytes:
    raw = header_text.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw + body


def assert_state_outcome(data: bytes):
    try:
        state = WorldState.from_bytes(data)
    except StateError as exc:
        assert exc.code in ("INVALID_STATE", "SESSION_TOO_LONG") and str(exc)
        return None
    assert isinstance(state, WorldState)
    return state


def test_the_unfuzzed_state_reads_back():
    assert assert_state_outcome(STATE).num_latents == 4


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), st.binary(max_size=40).map(lambda b: STATE[:8] + b)))
def test_arbitrary_bytes_are_invalid_states(data):
    assert_state_outcome(data)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(STATE) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, len(STATE))))
def test_mutated_state_bytes_are_invalid_states(edits, cut):
    data = bytearray(STATE)
    for position, value in edits:
        data[position] = value
    assert_state_outcome(bytes(data[:cut] if cut is not None else data))


HEADER, BODY = split_state(STATE)
header_paths = st.sampled_from(
    [("__metadata__", k) for k in HEADER["__metadata__"]]
    + [(name, field) for name in HEADER if name != "__metadata__" for field in ("dtype", "shape", "data_offsets")]
    + [(name, field, i) for name in HEADER if name != "__metadata__" for field in ("shape", "data_offsets")
       for i in (0, 1)])
header_values = st.one_of(json_values, st.sampled_from(["²", "١٢", "9" * 30, "-1", " 5", "nan", "1e400", "inf",
                                                        "ar", "bidirectional", "F32", "I64", "BOOL", "F16"]),
                          st.integers(0, 10 ** 6), st.just(MARKER))


@FUZZ
@given(changes=st.lists(st.tuples(header_paths, header_values), min_size=1, max_size=3), drop=st.booleans())
def test_mutated_state_headers_are_invalid_states(changes, drop):
    header = json.loads(json.dumps(HEADER))
    for path, value in changes:
        node = header
        for part in path[:-1]:  # an earlier change may have replaced a container by a scalar
            ok = (part in node) if isinstance(node, dict) else (isinstance(node, list) and part < len(node))
            node = node[part] if ok else None
        last = path[-1]
        if isinstance(node, dict):
            if drop:
                node.pop(last, None)
            else:
                node[last] = value
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = value
    text = dumps(header)
    assert_state_outcome(join_state(text, BODY))


def test_huge_integers_in_a_state_header_are_invalid_state():
    big = "9" * BIG_DIGITS
    text = json.dumps(HEADER)
    for old in ('"data_offsets": [0, ', '"shape": ['):
        data = join_state(text.replace(old, old + big + ", ", 1), BODY)
        with pytest.raises(StateError) as err:
            WorldState.from_bytes(data)
        assert err.value.code == "INVALID_STATE"
    with pytest.raises(StateError):
        WorldState.from_bytes(join_state(text[:-1] + f', "x": {big}}}', BODY))
    for digits in ("²", "١٢", "9" * 30):  # str.isdigit() accepts these; int() refuses the first
        header = json.loads(text)
        header["__metadata__"]["width"] = digits
        with pytest.raises(StateError, match="width"):
            WorldState.from_bytes(join_state(json.dumps(header), BODY))
    assert isinstance(StateError("x"), PipelineError)
