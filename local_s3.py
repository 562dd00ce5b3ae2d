#!/usr/bin/env python
"""A local S3 for trying the worker with a bucket, in one command (development only).

    python local_s3.py                    # S3 on 127.0.0.1:9000 with the bucket "videos"; Ctrl-C stops
    python local_s3.py --port 9100 --bucket renders
    python local_s3.py --upload street.png inputs/street.png   # put an input image in (server up or not)

Runs moto's S3 server (``moto[server]`` from requirements-dev.txt; in memory, any credentials are
accepted), creates the bucket through the worker's own storage client, and prints the ``MINIO_*``
settings that point the worker at it. Nothing is kept after it stops.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

ACCESS_KEY = "local-access-key"
SECRET_KEY = "local-secret-key"


def settings(host: str, port: int, bucket: str) -> dict:
    return {
        "MINIO_ENDPOINT": f"http://{host}:{port}",
        "MINIO_ACCESS_KEY": ACCESS_KEY,
        "MINIO_SECRET_KEY": SECRET_KEY,
        "MINIO_BUCKET": bucket,
        "MINIO_REGION": "us-east-1",
    }


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _upload_all(env: dict, uploads) -> int:
    """Put each (file, key) into the bucket of ``env``; 0, or 1 with the reason on stderr."""
    import mimetypes

    from worker.errors import WorkerError
    from worker.storage import Storage

    storage = Storage.from_env(env)
    try:
        storage.ensure_bucket()
        for name, key in uploads:
            kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
            storage.put_bytes(key, Path(name).read_bytes(), kind)
            print(f"uploaded {name} as {key!r} (bucket {env['MINIO_BUCKET']!r}): send \"image_key\": \"{key}\"",
                  flush=True)
    except WorkerError as exc:
        print(f"local_s3: upload failed: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port (default 9000)")
    parser.add_argument("--bucket", default="videos", help='bucket to create (default "videos")')
    parser.add_argument("--upload", nargs=2, action="append", metavar=("FILE", "KEY"), default=[],
                        help="put FILE into the bucket as KEY (e.g. an input image for image_key); "
                             "repeatable. With a local S3 already listening on --host/--port it uploads "
                             "there and exits; otherwise it starts one first and keeps serving")
    args = parser.parse_args(argv)
    missing = [f for f, _ in args.upload if not Path(f).is_file()]
    if missing:
        print(f"local_s3: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.upload and _listening(args.host, args.port):  # a server from an earlier `python local_s3.py`
        return _upload_all(settings(args.host, args.port, args.bucket), args.upload)

    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        print("local_s3: moto is not installed; pip install -r requirements-dev.txt", file=sys.stderr)
        return 2
    from worker.storage import Storage

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    try:
        server.start()
    except OSError as exc:
        print(f"local_s3: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((args.host, args.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    print("local_s3: the S3 server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.05)
        env = settings(args.host, args.port, args.bucket)
        Storage.from_env(env).ensure_bucket()
        print(f"local S3 ready on {env['MINIO_ENDPOINT']}, bucket {args.bucket!r}; point the worker at it with:")
        print("export " + " ".join(f"{k}={v}" for k, v in env.items()), flush=True)
        if args.upload and _upload_all(env, args.upload):
            return 1
        while not stop.is_set():
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
