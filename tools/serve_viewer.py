"""Serve the HLS viewer (viewer/) on 127.0.0.1 and print a link that plays a playlist.

    python -m tools.serve_viewer                       # http://127.0.0.1:8080/index.html
    python -m tools.serve_viewer --url '<preview_url>' # also prints ...index.html?src=<url-encoded>
    python -m tools.serve_viewer --port 0              # any free port

The link carries the playlist URL encoded with ``urllib.parse.quote(..., safe="")`` (what the page's
``URLSearchParams`` decodes back), so a presigned URL's own ``?`` / ``&`` / ``%2F`` survive.
"""

from __future__ import annotations

import argparse
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

VIEWER = Path(__file__).resolve().parents[1] / "viewer"


def viewer_link(base: str, playlist_url: str | None = None) -> str:
    """``base``/index.html, with ``?src=`` + the URL-encoded ``playlist_url`` when given."""
    link = base.rstrip("/") + "/index.html"
    return f"{link}?src={quote(playlist_url, safe='')}" if playlist_url else link


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # one line per request is noise here
        pass


def start(host: str = "127.0.0.1", port: int = 8080) -> tuple[ThreadingHTTPServer, str]:
    """Serve viewer/ in a daemon thread; returns (server, base URL). ``server.shutdown()`` stops it."""
    httpd = ThreadingHTTPServer((host, port), partial(_Quiet, directory=str(VIEWER)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True, name="serve-viewer").start()
    return httpd, f"http://{host}:{httpd.server_address[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.serve_viewer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port (default 8080)")
    parser.add_argument("--url", help="a preview_url (HLS playlist) to link to, as the job returned it")
    args = parser.parse_args(argv)
    try:
        httpd, base = start(args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"viewer: {viewer_link(base, args.url)}", flush=True)
    print("Ctrl-C stops it", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.shutdown()
        httpd.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
