"""A fake Hugging Face Hub on 127.0.0.1 for the real huggingface_hub client (tests only).

Serves just enough of the Hub's HTTP API for ``repo_info``, ``list_repo_tree`` and file downloads
(HEAD + GET on ``/<repo>/resolve/<rev>/<file>``). Records every request, can fail on demand (an
HTTP status or a dropped connection per file or per API call), and ``install`` points
huggingface_hub's endpoint at it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

#: X-Error-Code the real Hub sends, which huggingface_hub maps to typed errors
ERROR_CODES = {403: "GatedRepo"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients closing keep-alive sockets is normal
            super().handle_error(request, client_address)


class FakeHubServer:
    def __init__(self, repos: dict[str, dict[str, bytes]], commit: str = "c" * 40):
        self.repos, self.commit = repos, commit
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.offline_seen: list[bool] = []  # huggingface_hub's offline flag at each request
        #: "api" or a file path -> statuses to answer with, in order (0: drop the connection)
        self.failures: dict[str, list[int]] = {}
        self.error_codes: dict[int, str] = dict(ERROR_CODES)
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, body=b"", headers=None, head=False):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj):
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def _fail(self, key, head) -> bool:
                with outer._lock:
                    queue = outer.failures.get(key)
                    status = queue.pop(0) if queue else None
                if status is None:
                    return False
                if status == 0:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return True
                code = outer.error_codes.get(status)
                self._send(status, b'{"error": "injected"}', {"X-Error-Code": code} if code else {}, head)
                return True

            def _route(self, head=False):
                from huggingface_hub import constants

                path = unquote(urlparse(self.path).path)
                with outer._lock:
                    outer.requests.append((self.command, path))
                    outer.offline_seen.append(constants.is_offline_mode())
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    repo = "/".join(parts[2:4])
                    if repo not in outer.repos:
                        return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
                    if self._fail("api", head):
                        return None
                    files = outer.repos[repo]
                    if parts[4] == "revision":
                        return self._json({"id": repo, "sha": outer.commit, "siblings": []})
                    if parts[4] == "tree":
                        dirs = sorted({k.rsplit("/", 1)[0] for k in files if "/" in k})
                        return self._json(
                            [{"type": "directory", "oid": "0" * 40, "path": d} for d in dirs]
                            + [{"type": "file", "oid": "1" * 40, "size": len(v), "path": k} for k, v in sorted(files.items())]
                        )
                if "resolve" in parts:
                    i = parts.index("resolve")
                    repo, filename = "/".join(parts[:i]), "/".join(parts[i + 2:])
                    if repo not in outer.repos:
                        return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)
                    data = outer.repos[repo].get(filename)
                    if data is None:
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                    if not head and self._fail(filename, head):
                        return None
                    etag = '"' + hashlib.sha256(data).hexdigest() + '"'
                    return self._send(200, data, {"X-Repo-Commit": outer.commit, "ETag": etag}, head)
                return self._send(404)

            def do_GET(self):
                self._route()

            def do_POST(self):
                self._route()

            def do_HEAD(self):
                self._route(head=True)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def install(self, monkeypatch) -> "FakeHubServer":
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        return self

    def gets(self, repo: str | None = None) -> list[str]:
        """Files fetched with GET (``repo:path``), in request order."""
        out = []
        for method, path in self.requests:
            if method == "GET" and "/resolve/" in path:
                head, tail = path.strip("/").split("/resolve/", 1)
                if repo is None or head == repo:
                    out.append(f"{head}:{tail.split('/', 1)[1]}")
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()
