"""The live server: ``python -m worker.live`` (FastAPI on uvicorn; docs/LIVE.md).

- ``GET /ping``: RunPod load-balancing health (200 when the models are loaded, 204 while they load
  in a background thread, 503 when loading failed); on ``PORT_HEALTH`` too when that differs from
  ``PORT``.
- ``GET /``: the playground page ``viewer/live.html``; ``/viewer/...``: the other static files.
- ``WS /session``: one live world (worker.live_session). One world per worker: a second client is
  closed at once with 1013 and a retry hint.

Access: behind a RunPod load-balancing endpoint the proxy checks the API key. Self-hosted, set
``WORLDPLAY_LIVE_TOKEN`` (``Authorization: Bearer``, ``?token=`` or the open message's ``token``);
the server refuses to listen on a non-loopback address without one unless
``WORLDPLAY_LIVE_ALLOW_NO_TOKEN=1`` (or it runs on RunPod, ``RUNPOD_ENDPOINT_ID`` set). Browsers'
``Origin`` must be the page's own host or listed in ``WORLDPLAY_LIVE_ORIGINS``.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import logging
import os
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from fastapi import WebSocket

from schemas import live as msgs
from worker import job
from worker.errors import WorkerError
from worker.live_session import LiveSession, LiveSettings, SessionRecord

log = logging.getLogger("worldplay.live")

VIEWER = Path(__file__).resolve().parent.parent / "viewer"
DEFAULT_PORT = 8000
BUSY_REASON = "LIVE_BUSY: this worker runs a live world already; retry in a few seconds or on another worker"
WS_MAX_BYTES = msgs.MAX_OPEN_MESSAGE_BYTES + 1024  # larger frames: uvicorn closes with 1009


class LiveState:
    """What the app shares between connections: the one session, settings, the last records."""

    def __init__(self, settings: LiveSettings):
        self.settings = settings
        self.session: Optional[LiveSession] = None
        self.session_ended: Optional[asyncio.Event] = None
        self.records: list = []  # SessionRecord per finished session (bench, tests)


def _origin_allowed(origin: str, host: Optional[str], allowed: tuple) -> bool:
    origin = origin.strip().rstrip("/")
    if origin in allowed or "*" in allowed:
        return True
    parts = urlsplit(origin)
    return bool(host) and parts.netloc.lower() == host.strip().lower()  # same origin


def _given_token(ws) -> Optional[str]:
    auth = ws.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return ws.query_params.get("token")


def token_ok(expected: Optional[str], given: Optional[str]) -> bool:
    if not expected:
        return True
    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def create_app(settings: Optional[LiveSettings] = None, *, preload: bool = True):
    from fastapi import FastAPI
    from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
    from fastapi.staticfiles import StaticFiles

    state = LiveState(settings or LiveSettings.from_env())

    @asynccontextmanager
    async def lifespan(app):
        if preload:
            threading.Thread(target=job.preload, name="model-preload", daemon=True).start()
        yield
        if state.session is not None:  # shutdown: the world is saved before the process ends
            state.session.finish("shutdown")
            try:
                await asyncio.wait_for(state.session_ended.wait(), 60)
            except asyncio.TimeoutError:
                log.error("live: the session did not finish saving within 60 s of shutdown")

    app = FastAPI(title="WorldPlay live worlds", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.live = state

    @app.get("/ping")
    def ping():
        if job.MODELS.loaded:
            pipe = job.MODELS.pipe
            live_decoder = getattr(pipe, "live_decoder", None)  # which decoder a new world streams with
            return JSONResponse({"status": "healthy", "busy": state.session is not None,
                                 "live_decoder": live_decoder() if callable(live_decoder) else "full"})
        if job.MODELS.last_error:
            return JSONResponse({"status": "unhealthy", "error": job.MODELS.last_error}, status_code=503)
        return Response(status_code=204)  # initialising

    @app.get("/")
    def index():
        page = VIEWER / "live.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return PlainTextResponse("viewer/live.html is not part of this build; connect a client to "
                                 "WS /session (docs/LIVE.md)", status_code=404)

    if VIEWER.is_dir():
        app.mount("/viewer", StaticFiles(directory=str(VIEWER)), name="viewer")

    @app.websocket("/session")
    async def live_session(ws: WebSocket):
        await ws.accept()
        s = state.settings
        origin = ws.headers.get("origin")
        if origin and not _origin_allowed(origin, ws.headers.get("host"), s.origins):
            await ws.close(code=1008, reason="LIVE_UNAUTHORIZED: origin not allowed (WORLDPLAY_LIVE_ORIGINS)")
            return
        given = _given_token(ws)
        if given is not None and not token_ok(s.token, given):
            await ws.close(code=1008, reason="LIVE_UNAUTHORIZED: wrong token")
            return
        if state.session is not None:
            await ws.close(code=1013, reason=BUSY_REASON)
            return
        record = SessionRecord()
        sess = LiveSession(ws, s, record)
        state.session, state.session_ended = sess, asyncio.Event()
        try:
            await _serve(ws, sess, s, authenticated=given is not None or not s.token)
        finally:
            state.records.append(record)
            state.session = None
            state.session_ended.set()

    return app


async def _receive(ws):
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        return "disconnect", None
    if message.get("bytes") is not None:
        return "binary", message["bytes"]
    return "text", message.get("text") or ""


async def _serve(ws, sess: LiveSession, s: LiveSettings, *, authenticated: bool) -> None:
    """Wait for a good ``open`` (errors answered, idle timeout), then run the world."""
    while True:
        try:
            kind, payload = await asyncio.wait_for(_receive(ws), s.idle_seconds)
        except asyncio.TimeoutError:
            await sess.close_socket(1000, "idle: no open message")
            return
        if kind == "disconnect":
            return
        if kind == "binary":
            await sess.close_socket(1003, "INVALID_MESSAGE: binary frames are not accepted; send JSON text")
            return
        try:
            msg = msgs.parse_client_message(payload)
        except msgs.MessageError as exc:
            await sess.send_error("INVALID_MESSAGE", str(exc))
            continue
        if msg.type != "open":
            await sess.send_error("INVALID_MESSAGE", f"send an open message first (got {msg.type})")
            continue
        if not authenticated:
            if not token_ok(s.token, msg.token):
                await sess.close_socket(1008, "LIVE_UNAUTHORIZED: missing or wrong token "
                                              "(WORLDPLAY_LIVE_TOKEN)")
                return
            authenticated = True
        try:
            await sess.open(msg)
        except WorkerError as exc:
            await sess.send_error(exc.code, exc.message)
            continue
        except Exception as exc:  # noqa: BLE001
            from worker.errors import from_exception

            err = from_exception(exc)
            log.error("live: open failed: %s: %s", err.code, err.message, exc_info=exc)
            await sess.send_error(err.code, err.message)
            await sess.close_socket(1011, f"{err.code}")
            return
        break
    await sess.run(lambda: _receive(ws))
    await sess.close_socket(1000, sess.reason or "close")


class BackgroundServer:
    """An app on uvicorn in a daemon thread (tests, benchmarks, gpu_check): ``port``, ``stop()``."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        import socket
        import time

        import uvicorn

        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, ws_max_size=WS_MAX_BYTES,
                                                    log_level="warning", timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.stop()
                raise RuntimeError("the live server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(20)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, settings: LiveSettings) -> None:
    """No listening on a non-loopback address without a token, unless allowed or on RunPod."""
    if _is_loopback(host) or settings.token or settings.allow_no_token or os.environ.get("RUNPOD_ENDPOINT_ID"):
        return
    raise SystemExit(f"worker.live: refusing to listen on {host} without WORLDPLAY_LIVE_TOKEN; set a token, "
                     "listen on 127.0.0.1, or set WORLDPLAY_LIVE_ALLOW_NO_TOKEN=1 (behind your own proxy)")


def _port(name: str, default: int) -> int:
    raw = (os.environ.get(name) or "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"worker.live: {name}={raw!r} is not a port number") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.live", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    on_runpod = bool(os.environ.get("RUNPOD_ENDPOINT_ID"))
    parser.add_argument("--host", default=os.environ.get("WORLDPLAY_LIVE_HOST")
                        or ("0.0.0.0" if on_runpod else "127.0.0.1"),
                        help="address to listen on (WORLDPLAY_LIVE_HOST; default 127.0.0.1, 0.0.0.0 on RunPod)")
    parser.add_argument("--port", type=int, default=_port("PORT", DEFAULT_PORT),
                        help=f"PORT (default {DEFAULT_PORT})")
    parser.add_argument("--health-port", type=int, default=None, help="PORT_HEALTH (default: PORT)")
    args = parser.parse_args(argv)
    job.configure_logging()
    settings = LiveSettings.from_env()
    check_exposure(args.host, settings)
    health_port = args.health_port or _port("PORT_HEALTH", args.port)
    asyncio.run(serve(args.host, args.port, health_port, settings))
    return 0


async def serve(host: str, port: int, health_port: int, settings: LiveSettings) -> None:
    import uvicorn
    from fastapi import FastAPI

    app = create_app(settings)
    servers = [uvicorn.Server(uvicorn.Config(app, host=host, port=port, ws_max_size=WS_MAX_BYTES,
                                             log_level="info", timeout_graceful_shutdown=60))]
    if health_port != port:
        health = FastAPI(docs_url=None, redoc_url=None)
        health.add_api_route("/ping", next(r.endpoint for r in app.routes if getattr(r, "path", "") == "/ping"))
        servers.append(uvicorn.Server(uvicorn.Config(health, host=host, port=health_port, log_level="warning",
                                                     lifespan="off")))
    log.info("live server on http://%s:%d (health on %d): WS /session, GET /ping", host, port, health_port)
    await asyncio.gather(*(s.serve() for s in servers))


if __name__ == "__main__":
    raise SystemExit(main())
