"""The download of a client-supplied ``image_url``: public addresses only, bounded in bytes and time.

A worker runs inside someone's network; an ``image_url`` must never make it a way in (server-side
request forgery). So, for the URL and for every redirect hop:

* only ``http`` and ``https``;
* the host is resolved once (``getaddrinfo``, which also normalises forms such as ``127.1``,
  ``2130706433`` or ``0x7f.0.0.1``) and *every* address it resolves to must be globally routable
  (:func:`forbidden_reason`: loopback, private, link-local including the cloud metadata address
  169.254.169.254, carrier-grade NAT, multicast, reserved and documentation ranges are refused, and
  IPv6 addresses that embed an IPv4 one - IPv4-mapped, 6to4, Teredo, NAT64 - are judged by it);
* the connection goes to the very address that was checked (the HTTP ``Host`` header, TLS SNI and
  certificate check still use the name), so a second DNS answer (rebinding) cannot redirect it;
* redirects are followed by hand (at most ``max_redirects``), each hop checked again.

``WORLDPLAY_ALLOW_PRIVATE_URLS=1`` lets an operator fetch from private addresses (an internal image
host); the other rules stay. Reads of ``image_key`` / ``pose_key`` from MinIO never come here.

The whole download (all hops and retries) has one deadline, ``WORLDPLAY_IMAGE_URL_TIMEOUT`` seconds
(default 60), and stops within about 0.1 s of the job's cancel flag being set: a small watchdog thread
shuts the socket down, which wakes a blocked read. Every failure is a coded :class:`WorkerError`:
``IMAGE_URL_FORBIDDEN``, ``IMAGE_DOWNLOAD_FAILED``, ``INVALID_IMAGE`` (too large), ``INVALID_INPUT``
(not a usable URL) or ``CANCELLED`` - never an internal error.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import List, Optional
from urllib.parse import unquote, urljoin, urlsplit

from worker.errors import WorkerError

log = logging.getLogger("worldplay.fetch")

ALLOW_PRIVATE_ENV = "WORLDPLAY_ALLOW_PRIVATE_URLS"
DEADLINE_ENV = "WORLDPLAY_IMAGE_URL_TIMEOUT"
DEFAULT_DEADLINE = 60.0
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_WATCH_INTERVAL = 0.05
_CHUNK = 64 * 1024
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")


@dataclass(frozen=True)
class FetchRetry:
    """Attempts per hop for transient failures (connection errors, 5xx, 408, 429)."""

    attempts: int = 3
    initial: float = 0.5
    maximum: float = 4.0


# ---- address policy -----------------------------------------------------------------------------
def _kind(ip) -> str:
    for attr, word in (("is_loopback", "loopback"), ("is_link_local", "link-local"),
                       ("is_multicast", "multicast"), ("is_unspecified", "unspecified"),
                       ("is_private", "private"), ("is_reserved", "reserved")):
        if getattr(ip, attr, False):
            return word
    return "non-public"


def forbidden_reason(address: str) -> Optional[str]:
    """None when ``address`` (an IP literal) is globally routable, else what kind of address it is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "unparsable"
    if ip.version == 6:
        embedded = []
        if ip.ipv4_mapped is not None:
            embedded.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        for inner in embedded:
            reason = forbidden_reason(str(inner))
            if reason is not None:
                return reason
        if ip.ipv4_mapped is not None or ip in _NAT64:
            return None  # judged by the IPv4 address inside, as IPv4 itself would be
        if ip not in _GLOBAL_UNICAST_V6:  # ::/8 (incl. IPv4-compatible), fc00::/7, fe80::/10, ...
            return _kind(ip)
    if not ip.is_global or ip.is_multicast:
        return _kind(ip)
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def resolve(host: str, port: int) -> List[str]:
    """Every address ``host`` resolves to, in the resolver's order (one lookup)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(info[4][0] for info in infos))


def _dial(address: str, port: int, timeout: float) -> socket.socket:
    """Open the TCP connection to the checked address (the one place a socket is made)."""
    return socket.create_connection((address, port), timeout=timeout)


# ---- settings -----------------------------------------------------------------------------------
def allow_private_urls() -> bool:
    from pipeline.settings import env_flag

    return bool(env_flag(ALLOW_PRIVATE_ENV, False))


def download_deadline() -> float:
    from pipeline.settings import env_number

    value = env_number(DEADLINE_ENV, DEFAULT_DEADLINE, float)
    return value if value > 0 else DEFAULT_DEADLINE


# ---- connections that go to one given address -----------------------------------------------------
def _connection_classes():
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class _PinnedHTTP(HTTPConnection):
        def _new_conn(self):  # urllib3 hook: the socket to the checked address
            return _dial(self._dns_host, self.port, self.timeout)

    class _PinnedHTTPS(HTTPSConnection):
        def _new_conn(self):
            return _dial(self._dns_host, self.port, self.timeout)

    return _PinnedHTTP, _PinnedHTTPS


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, no brackets
    port: int
    explicit_port: bool
    path: str  # path + query, never empty
    shown: str  # for messages: no credentials, no query
    auth: Optional[str]

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return f"{name}:{self.port}" if self.explicit_port else name


def _target(url: str, what: str) -> _Target:
    # the client's own URL is bad input; a bad redirect is the remote server's fault
    bad = "INVALID_INPUT" if what == "image_url" else "IMAGE_DOWNLOAD_FAILED"
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise WorkerError(bad, f"{what} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WorkerError("IMAGE_URL_FORBIDDEN" if what != "image_url" else "INVALID_INPUT",
                          f"{what} must be an http:// or https:// URL")
    if not host:
        raise WorkerError(bad, f"{what} has no host")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise WorkerError(bad, f"{what} has an invalid host name") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    name = f"[{host}]" if ":" in host else host
    netloc = f"{name}:{port}" if port is not None else name
    auth = None
    if parts.username is not None:
        import urllib3

        # userinfo is percent-encoded in a URL (``p%40ss`` is ``p@ss``): the header carries it decoded
        user, password = unquote(parts.username), unquote(parts.password or "")
        auth = urllib3.util.make_headers(basic_auth=f"{user}:{password}")["authorization"]
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), port is not None,
                   path, f"{scheme}://{netloc}{parts.path}"[:200], auth)


class _Watchdog:
    """Shuts the connection's socket down when the deadline passes or the job is cancelled."""

    def __init__(self, end: float, cancel_event: Optional[threading.Event]):
        self.end = end
        self.cancel_event = cancel_event
        self.reason: Optional[str] = None
        self.conn = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="image-url-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(_WATCH_INTERVAL):
            if self.cancel_event is not None and self.cancel_event.is_set():
                self.reason = "cancelled"
            elif time.monotonic() >= self.end:
                self.reason = "deadline"
            else:
                continue
            sock = getattr(self.conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


class _Transient(Exception):
    pass


class _Redirect(Exception):
    def __init__(self, location: str):
        super().__init__(location)
        self.location = location


# ---- the download -------------------------------------------------------------------------------
def fetch_url(url: str, max_bytes: int, *, retry=None, connect_timeout: float = 5.0,
              read_timeout: float = 30.0, max_redirects: int = MAX_REDIRECTS,
              deadline: Optional[float] = None, cancel_event: Optional[threading.Event] = None,
              allow_private: Optional[bool] = None) -> bytes:
    """GET ``url`` (see the module docstring for the rules) and return at most ``max_bytes``.

    ``retry`` is any object with ``attempts``, ``initial`` and ``maximum`` (:class:`FetchRetry`);
    ``deadline`` (seconds for everything) defaults to ``WORLDPLAY_IMAGE_URL_TIMEOUT``;
    ``allow_private`` to ``WORLDPLAY_ALLOW_PRIVATE_URLS``.
    """
    retry = retry or FetchRetry()
    deadline = download_deadline() if deadline is None else float(deadline)
    allow_private = allow_private_urls() if allow_private is None else bool(allow_private)
    end = time.monotonic() + deadline
    target = _target(url, "image_url")
    first = target
    hops = 0
    attempt = 0
    while True:
        _stop_if(cancel_event, end, deadline, target)
        addresses = _addresses(target, allow_private, hops, end, deadline, cancel_event)
        try:
            return _get(target, addresses, max_bytes, end, deadline, cancel_event,
                        connect_timeout, read_timeout,
                        first.auth if _same_origin(target, first) else None)
        except _Redirect as hop:
            hops += 1
            if hops > max_redirects:
                raise WorkerError("IMAGE_DOWNLOAD_FAILED",
                                  f"{first.shown}: more than {max_redirects} redirects") from None
            try:
                joined = urljoin(_url_of(target), hop.location)
            except ValueError:
                raise WorkerError("IMAGE_DOWNLOAD_FAILED", f"{target.shown} redirected to an "
                                                           "invalid URL") from None
            target = _target(joined, "a redirect of image_url")
            attempt = 0
        except _Transient as exc:
            attempt += 1
            if attempt >= max(1, int(retry.attempts)):
                raise WorkerError("IMAGE_DOWNLOAD_FAILED",
                                  f"{target.shown} failed after {attempt} attempts: {exc}") from None
            delay = min(float(retry.maximum), float(retry.initial) * 2 ** (attempt - 1))
            delay = random.uniform(delay / 2, delay)
            log.info("image_url %s: %s; retrying in %.2f s", target.shown, exc, delay)
            if delay >= end - time.monotonic():  # no time left for another try
                raise WorkerError("IMAGE_DOWNLOAD_FAILED",
                                  f"{target.shown} failed ({exc}) and the {deadline:g} s deadline "
                                  f"({DEADLINE_ENV}) leaves no time to retry") from None
            if cancel_event is not None:
                cancel_event.wait(delay)
            else:
                time.sleep(delay)


def _url_of(t: _Target) -> str:
    name = f"[{t.host}]" if ":" in t.host else t.host
    return f"{t.scheme}://{name}:{t.port}{t.path}"


def _same_origin(a: _Target, b: _Target) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _stop_if(cancel_event, end: float, deadline: float, target: _Target) -> None:
    if cancel_event is not None and cancel_event.is_set():
        raise WorkerError("CANCELLED", "job cancelled while downloading image_url")
    if time.monotonic() >= end:
        raise WorkerError("IMAGE_DOWNLOAD_FAILED", f"{target.shown}: the download took longer than "
                                                   f"{deadline:g} s ({DEADLINE_ENV})")


def _resolve_bounded(target: _Target, end: float, deadline: float, cancel_event) -> List[str]:
    """``resolve`` on a helper thread, so that a slow DNS server cannot outlast the deadline or the
    job's cancellation (the thread itself ends with the resolver's own timeout)."""
    result: dict = {}

    def work() -> None:
        try:
            result["value"] = resolve(target.host, target.port)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=work, name="image-url-resolve", daemon=True)
    thread.start()
    while True:
        thread.join(_WATCH_INTERVAL)
        if not thread.is_alive():
            break
        _stop_if(cancel_event, end, deadline, target)
    if "error" in result:
        raise result["error"]
    return result["value"]


def _addresses(target: _Target, allow_private: bool, hops: int, end: float, deadline: float,
               cancel_event) -> List[str]:
    where = "image_url" if hops == 0 else "a redirect of image_url"
    try:
        addresses = _resolve_bounded(target, end, deadline, cancel_event)
    except socket.gaierror as exc:
        raise WorkerError("IMAGE_DOWNLOAD_FAILED",
                          f"{target.shown}: host {target.host!r} could not be resolved "
                          f"({exc.strerror or exc})") from None
    except (UnicodeError, ValueError, OSError) as exc:
        raise WorkerError("IMAGE_DOWNLOAD_FAILED", f"{target.shown}: host {target.host!r} could "
                                                   f"not be resolved ({type(exc).__name__})") from None
    if not addresses:
        raise WorkerError("IMAGE_DOWNLOAD_FAILED", f"{target.shown}: host has no address")
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(address)
            if reason is not None:
                literal = _is_ip(target.host)  # the URL names the address itself
                shown = f"is a {reason} address" if literal else f"resolves to a {reason} address"
                raise WorkerError("IMAGE_URL_FORBIDDEN",
                                  f"{where} host {target.host!r} {shown}; only public addresses "
                                  f"are fetched (an operator can allow private ones with "
                                  f"{ALLOW_PRIVATE_ENV}=1)")
    return addresses


def _get(target: _Target, addresses: List[str], max_bytes: int, end: float, deadline: float,
         cancel_event, connect_timeout: float, read_timeout: float, auth: Optional[str]) -> bytes:
    """One GET to the first address that accepts a connection."""
    import urllib3

    http_cls, https_cls = _connection_classes()
    headers = {"Host": target.host_header, "User-Agent": "worldplay-worker",
               "Accept": "image/png, image/jpeg, image/webp, */*;q=0.1",
               "Accept-Encoding": "identity"}
    if auth:
        headers["Authorization"] = auth
    watchdog = _Watchdog(end, cancel_event)
    conn = None
    try:
        last_error: Optional[BaseException] = None
        for address in addresses:
            remaining = max(0.01, end - time.monotonic())
            if target.scheme == "https":
                import certifi

                conn = https_cls(address, target.port, timeout=min(connect_timeout, remaining),
                                 server_hostname=target.host, assert_hostname=target.host,
                                 cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())
            else:
                conn = http_cls(address, target.port, timeout=min(connect_timeout, remaining))
            watchdog.conn = conn
            try:
                conn.connect()
                break
            except (OSError, urllib3.exceptions.HTTPError) as exc:
                last_error = exc
                conn.close()
                conn = None
                if watchdog.reason:
                    break
        if conn is None:
            _after_watchdog(watchdog, deadline, target)
            if isinstance(last_error, (ssl.SSLError, urllib3.exceptions.SSLError,
                                       ssl.CertificateError)):
                raise WorkerError("IMAGE_DOWNLOAD_FAILED",
                                  f"{target.shown}: TLS failed ({_short(last_error)})")
            raise _Transient(_short(last_error))
        conn.timeout = min(read_timeout, max(0.01, end - time.monotonic()))
        conn.request("GET", target.path, headers=headers, preload_content=False,
                     decode_content=True)
        resp = conn.getresponse()
        try:
            data = _read(resp, target, max_bytes)
            # a socket shut down by the watchdog can look like a normal end of the body
            _after_watchdog(watchdog, deadline, target)
            return data
        finally:
            resp.release_conn()
            resp.close()
    except (_Redirect, WorkerError):
        raise
    except _Transient:
        _after_watchdog(watchdog, deadline, target)
        raise
    except urllib3.exceptions.DecodeError:
        _after_watchdog(watchdog, deadline, target)
        raise WorkerError("IMAGE_DOWNLOAD_FAILED", f"{target.shown}: the response body could not "
                                                   "be decoded (corrupt Content-Encoding)") from None
    except (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException) as exc:
        _after_watchdog(watchdog, deadline, target)
        if isinstance(exc, (ssl.SSLError, urllib3.exceptions.SSLError, ssl.CertificateError)):
            raise WorkerError("IMAGE_DOWNLOAD_FAILED",
                              f"{target.shown}: TLS failed ({_short(exc)})") from None
        raise _Transient(_short(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a remote fault is never a worker fault
        _after_watchdog(watchdog, deadline, target)
        raise WorkerError("IMAGE_DOWNLOAD_FAILED", f"{target.shown}: {_short(exc)}") from None
    finally:
        watchdog.stop()
        if conn is not None:
            conn.close()


def _after_watchdog(watchdog: _Watchdog, deadline: float, target: _Target) -> None:
    if watchdog.reason == "cancelled":
        raise WorkerError("CANCELLED", "job cancelled while downloading image_url")
    if watchdog.reason == "deadline":
        raise WorkerError("IMAGE_DOWNLOAD_FAILED", f"{target.shown}: the download took longer than "
                                                   f"{deadline:g} s ({DEADLINE_ENV})")


def _read(resp, target: _Target, max_bytes: int) -> bytes:
    status = resp.status
    if status in _REDIRECTS:
        location = resp.headers.get("Location")
        if not location:
            raise WorkerError("IMAGE_DOWNLOAD_FAILED",
                              f"{target.shown} answered HTTP {status} without a Location")
        raise _Redirect(location)
    if status >= 500 or status in (408, 429):
        raise _Transient(f"HTTP {status}")
    if status != 200:
        raise WorkerError("IMAGE_DOWNLOAD_FAILED", f"{target.shown} answered HTTP {status}")
    declared = resp.headers.get("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > max_bytes:
        raise WorkerError("INVALID_IMAGE", f"image at {target.shown} is {int(declared)} bytes; "
                                           f"the limit is {max_bytes} bytes")
    chunks, total = [], 0
    for chunk in resp.stream(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise WorkerError("INVALID_IMAGE", f"image at {target.shown} exceeds the limit of "
                                               f"{max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _short(exc: Optional[BaseException]) -> str:
    if exc is None:
        return "no address accepted a connection"
    text = str(exc).splitlines()[0] if str(exc) else ""
    # urllib3 messages embed object reprs; keep them short
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__
