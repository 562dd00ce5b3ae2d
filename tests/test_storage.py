"""worker.storage against moto's S3 (through the real MinIO SDK) and a programmable HTTP stub."""

from __future__ import annotations

import datetime as dt
import logging
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from conftest import S3_ACCESS_KEY, S3_SECRET_KEY

from worker.errors import WorkerError
from worker.storage import RetryPolicy, Storage, fetch_url, parse_endpoint

FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.02)

_XML = {"Content-Type": "application/xml"}


def s3_error(code: str, message: str = "x") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>r1</RequestId></Error>").encode()


def stub_storage(stub, **kw) -> Storage:
    return Storage(stub.url, S3_ACCESS_KEY, S3_SECRET_KEY, "stub-bucket", region="us-east-1",
                   retry=kw.pop("retry", FAST), **kw)


def test_roundtrip_presign_and_fetch(storage):
    storage.put_bytes("in/hello.bin", b"hello world", "application/octet-stream")
    assert storage.get_bytes("in/hello.bin", 100) == b"hello world"
    assert storage.stat_size("in/hello.bin") == 11
    url, expires_at = storage.presigned_get("in/hello.bin", 600)
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200 and resp.content == b"hello world"
    expiry = dt.datetime.strptime(expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    delta = (expiry - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert 590 <= delta <= 601
    assert parse_qs(urlparse(url).query)["X-Amz-Expires"] == ["600"]
    assert S3_SECRET_KEY not in url


def test_put_file_sets_content_type(storage, tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"\x00" * 1000)
    storage.put_file("out/v.mp4", path, content_type="video/mp4")
    url, _ = storage.presigned_get("out/v.mp4", 60)
    resp = requests.get(url, timeout=10)
    assert resp.headers["Content-Type"] == "video/mp4" and len(resp.content) == 1000


def test_size_cap_checked_before_download(storage):
    storage.put_bytes("big.bin", b"x" * 5000)
    with pytest.raises(WorkerError) as info:
        storage.get_bytes("big.bin", 4999)
    assert info.value.code == "OBJECT_TOO_LARGE" and "5000 bytes" in info.value.message


def test_missing_object_and_bucket(storage, s3_server):
    with pytest.raises(WorkerError) as info:
        storage.get_bytes("nope/missing.png", 10)
    assert info.value.code == "OBJECT_NOT_FOUND" and "nope/missing.png" in info.value.message
    other = Storage(s3_server, S3_ACCESS_KEY, S3_SECRET_KEY, "no-such-bucket-xyz",
                    region="us-east-1", retry=FAST)
    assert other.bucket_exists() is False
    with pytest.raises(WorkerError) as info:
        other.get_bytes("a.png", 10)
    assert info.value.code == "BUCKET_NOT_FOUND"


def test_unreachable_endpoint_is_retried_then_unavailable(caplog):
    caplog.set_level(logging.WARNING, logger="worldplay.storage")
    port_closed = Storage("127.0.0.1:9", S3_ACCESS_KEY, S3_SECRET_KEY, "bucket-x",
                          region="us-east-1", retry=FAST, connect_timeout=1)
    with pytest.raises(WorkerError) as info:
        port_closed.get_bytes("a.png", 10)
    assert info.value.code == "STORAGE_UNAVAILABLE"
    assert "after 3 attempts" in info.value.message
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2  # attempts - 1
    assert S3_SECRET_KEY not in caplog.text + str(info.value)


def test_transient_5xx_then_success(http_stub):
    http_stub.route("/stub-bucket/k.txt",
                    (503, _XML, s3_error("SlowDown")), (500, _XML, s3_error("InternalError")),
                    (200, {"Content-Type": "text/plain", "ETag": '"e"',
                           "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}, b"hey"))
    st = stub_storage(http_stub)
    assert st.stat_size("k.txt") == 3  # HEAD retried twice, then OK
    assert http_stub.hits["/stub-bucket/k.txt"] == 3


def test_5xx_exhausts_attempts(http_stub):
    http_stub.route("/stub-bucket/k.txt", (502, {"Content-Type": "text/html"}, b"<html>bad gw"))
    st = stub_storage(http_stub, retry=RetryPolicy(attempts=4, initial=0.01, maximum=0.01))
    with pytest.raises(WorkerError) as info:
        st.get_bytes("k.txt", 10)
    assert info.value.code == "STORAGE_UNAVAILABLE" and "after 4 attempts" in info.value.message
    assert http_stub.hits["/stub-bucket/k.txt"] == 4


@pytest.mark.parametrize("status, code, expected", [
    (403, "AccessDenied", "STORAGE_ACCESS_DENIED"),
    (403, "SignatureDoesNotMatch", "STORAGE_ACCESS_DENIED"),
    (403, "InvalidAccessKeyId", "STORAGE_ACCESS_DENIED"),
])
def test_permanent_errors_are_not_retried(http_stub, status, code, expected):
    http_stub.route("/stub-bucket/k.txt", (status, _XML, s3_error(code)))
    st = stub_storage(http_stub)
    with pytest.raises(WorkerError) as info:
        st.put_bytes("k.txt", b"data")
    assert info.value.code == expected and code in info.value.message
    assert http_stub.hits["/stub-bucket/k.txt"] == 1
    assert S3_SECRET_KEY not in str(info.value)


def test_no_such_key_from_xml_not_retried(http_stub):
    http_stub.route("/stub-bucket/gone.png", (404, _XML, s3_error("NoSuchKey")))
    st = stub_storage(http_stub)
    with pytest.raises(WorkerError) as info:
        st.put_bytes("gone.png", b"x")
    assert info.value.code == "OBJECT_NOT_FOUND"
    assert http_stub.hits["/stub-bucket/gone.png"] == 1


def test_remove_objects(storage):
    for key in ("p/a.ts", "p/b.ts", "p/index.m3u8", "q/keep.mp4"):
        storage.put_bytes(key, b"x")
    # missing keys count as removed (S3's rule); a key named twice is sent once
    assert storage.remove_objects(["p/a.ts", "p/b.ts", "p/index.m3u8", "p/never.ts", "p/a.ts"]) == 4
    left = [o.object_name for o in storage._client.list_objects(storage.bucket, recursive=True)]
    assert left == ["q/keep.mp4"]
    assert storage.remove_objects([]) == 0
    many = [f"m/{i:05d}" for i in range(1001)]  # more than one request's 1000 keys
    storage.put_bytes(many[-1], b"x")
    assert storage.remove_objects(many) == 1001
    with pytest.raises(WorkerError) as info:
        storage.stat_size(many[-1])
    assert info.value.code == "OBJECT_NOT_FOUND"


def _delete_result(code: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?><DeleteResult><Deleted><Key>a</Key></Deleted>'
            f"<Error><Key>b</Key><Code>{code}</Code><Message>no</Message></Error>"
            "</DeleteResult>").encode()


@pytest.mark.parametrize("code, expected", [
    ("AccessDenied", "STORAGE_ACCESS_DENIED"),
    ("InternalError", "STORAGE_UNAVAILABLE"),
])
def test_remove_objects_names_the_keys_it_could_not_remove(http_stub, code, expected):
    """A multi-object DELETE answers 200 and lists per-key errors: any of them is a coded error (the
    request itself succeeded: not sent again)."""
    http_stub.route("/stub-bucket", (200, _XML, _delete_result(code)))
    st = stub_storage(http_stub)
    with pytest.raises(WorkerError) as info:
        st.remove_objects(["a", "b"])
    assert info.value.code == expected
    assert "1 of 2 objects" in info.value.message and "'b'" in info.value.message
    assert code in info.value.message
    assert http_stub.hits["/stub-bucket"] == 1


def test_remove_objects_retries_a_failed_request(http_stub):
    http_stub.route("/stub-bucket", (503, _XML, s3_error("SlowDown")),
                    (200, _XML, b'<DeleteResult><Deleted><Key>a</Key></Deleted></DeleteResult>'))
    assert stub_storage(http_stub).remove_objects(["a"]) == 1
    assert http_stub.hits["/stub-bucket"] == 2


@pytest.mark.parametrize("raw, use_ssl, expected", [
    ("minio:9000", None, ("minio:9000", False)),
    ("minio:9000", True, ("minio:9000", True)),
    ("http://minio:9000", True, ("minio:9000", False)),
    ("https://s3.example.com", False, ("s3.example.com", True)),
    ("https://s3.example.com/", None, ("s3.example.com", True)),
])
def test_parse_endpoint(raw, use_ssl, expected):
    assert parse_endpoint(raw, use_ssl) == expected


@pytest.mark.parametrize("raw", ["", "ftp://x:1", "http://x:1/path", "x:1/path",
                                 "http://user:pw@x:1"])
def test_parse_endpoint_rejects(raw):
    with pytest.raises(WorkerError) as info:
        parse_endpoint(raw)
    assert info.value.code == "STORAGE_NOT_CONFIGURED"
    assert "pw" not in info.value.message or raw != "http://user:pw@x:1"


def test_from_env(monkeypatch):
    env = {"MINIO_ENDPOINT": "minio.internal:9000", "MINIO_ACCESS_KEY": S3_ACCESS_KEY,
           "MINIO_SECRET_KEY": S3_SECRET_KEY, "MINIO_BUCKET": "videos", "MINIO_USE_SSL": "true",
           "MINIO_REGION": "eu-west-1"}
    st = Storage.from_env(env)
    assert (st.endpoint, st.secure, st.bucket, st.region) == ("minio.internal:9000", True,
                                                              "videos", "eu-west-1")
    text = repr(st) + str(st)
    assert S3_SECRET_KEY not in text and S3_ACCESS_KEY not in text
    assert "videos" in text
    for broken, missing in (({**env, "MINIO_SECRET_KEY": ""}, "MINIO_SECRET_KEY"),
                            ({**env, "MINIO_BUCKET": ""}, "MINIO_BUCKET"),
                            ({**env, "MINIO_ENDPOINT": ""}, "MINIO_ENDPOINT"),
                            ({**env, "MINIO_USE_SSL": "maybe"}, "MINIO_USE_SSL"),
                            ({**env, "MINIO_RETRY_ATTEMPTS": "0"}, "MINIO_RETRY_ATTEMPTS")):
        with pytest.raises(WorkerError) as info:
            Storage.from_env(broken)
        assert info.value.code == "STORAGE_NOT_CONFIGURED" and missing in info.value.message
    assert Storage.from_env({**env, "MINIO_RETRY_ATTEMPTS": "7"}).retry.attempts == 7


def test_public_endpoint_signs_for_public_host(storage, s3_env):
    st = Storage.from_env({**s3_env, "MINIO_PUBLIC_ENDPOINT": "https://cdn.example.com"})
    url, _ = st.presigned_get("any/key.mp4", 120)
    parsed = urlparse(url)
    assert parsed.scheme == "https" and parsed.netloc == "cdn.example.com"
    assert parsed.path == f"/{st.bucket}/any/key.mp4"


# ---- fetch_url ---------------------------------------------------------------------------------
def test_fetch_url_ok_and_errors(allow_private_urls, http_stub):
    http_stub.route("/img.png", (200, {"Content-Type": "image/png"}, b"\x89PNG" + b"x" * 100))
    assert fetch_url(f"{http_stub.url}/img.png", 1000) == b"\x89PNG" + b"x" * 100
    with pytest.raises(WorkerError) as info:
        fetch_url(f"{http_stub.url}/missing.png", 1000)
    assert info.value.code == "IMAGE_DOWNLOAD_FAILED" and "HTTP 404" in info.value.message


def test_fetch_url_byte_cap(allow_private_urls, http_stub):
    http_stub.route("/big.png", (200, {}, b"y" * 5000))
    with pytest.raises(WorkerError) as info:
        fetch_url(f"{http_stub.url}/big.png", 4000)
    assert info.value.code == "INVALID_IMAGE" and "5000 bytes" in info.value.message
    # no Content-Length (chunked): the stream itself is capped
    http_stub.route("/chunked.png", (200, {"Transfer-Encoding": "chunked"}, b"z" * 20000))
    with pytest.raises(WorkerError) as info:
        fetch_url(f"{http_stub.url}/chunked.png", 10000)
    assert info.value.code == "INVALID_IMAGE" and "exceeds" in info.value.message


def test_fetch_url_retries_5xx(allow_private_urls, http_stub):
    http_stub.route("/flaky.png", (503, {}, b""), (200, {}, b"ok"))
    fast = RetryPolicy(attempts=3, initial=0.01, maximum=0.01)
    assert fetch_url(f"{http_stub.url}/flaky.png", 100, retry=fast) == b"ok"
    assert http_stub.hits["/flaky.png"] == 2
    http_stub.route("/down.png", (500, {}, b""))
    with pytest.raises(WorkerError) as info:
        fetch_url(f"{http_stub.url}/down.png", 100, retry=fast)
    assert info.value.code == "IMAGE_DOWNLOAD_FAILED" and http_stub.hits["/down.png"] == 3


def test_fetch_url_unreachable_and_scheme(allow_private_urls):
    fast = RetryPolicy(attempts=2, initial=0.01, maximum=0.01)
    with pytest.raises(WorkerError) as info:
        fetch_url("http://127.0.0.1:9/a.png", 100, retry=fast, connect_timeout=1)
    assert info.value.code == "IMAGE_DOWNLOAD_FAILED" and "after 2 attempts" in info.value.message
    with pytest.raises(WorkerError) as info:
        fetch_url("file:///etc/passwd", 100)
    assert info.value.code == "INVALID_INPUT"


def test_fetch_url_hides_userinfo(allow_private_urls, http_stub):
    with pytest.raises(WorkerError) as info:
        fetch_url(f"http://user:{S3_SECRET_KEY}@127.0.0.1:{http_stub.port}/missing.png", 100)
    assert S3_SECRET_KEY not in str(info.value)


def test_storage_method_fetch_url(allow_private_urls, storage, http_stub):
    http_stub.route("/a.png", (200, {}, b"abc"))
    assert storage.fetch_url(f"{http_stub.url}/a.png", 10) == b"abc"
