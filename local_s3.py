#!/usr/bin/env python
"""A local S3 for trying the worker with a bucket, in one command (development only).

    python local_s3.py                    # S3 on 127.0.0.1:9000 with the bucket "videos"; Ctrl-C stops
    python local_s3.py --port 9100 --bucket renders

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port (default 9000)")
    parser.add_argument("--bucket", default="videos", help='bucket to create (default "videos")')
    args = parser.parse_args(argv)

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
