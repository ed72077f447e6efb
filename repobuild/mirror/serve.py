"""``repobuild serve``: a small, careful static HTTP server for a built tree.

It serves what a CDN in front of the tree would: GET and HEAD, byte ranges (apt resumes
partial downloads), strong validators and conditional requests, the Cache-Control and
Content-Type of :mod:`repobuild.mirror.cachepolicy`, and PEP 691 content negotiation on the
simple index (``index.json`` to clients that prefer ``application/vnd.pypi.simple.v1+json``,
``index.html`` to the others). No directory listing, nothing outside the root, no dot-file.

Built on :mod:`http.server` (threads, HTTP/1.1 keep-alive); files are streamed in chunks.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO
from urllib.parse import quote, unquote, urlsplit

from repobuild.errors import UsageError
from repobuild.mirror.cachepolicy import PEP691_JSON, cache_control, content_type

CHUNK = 256 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PEP691_HTML = "application/vnd.pypi.simple.v1+html"
# PEP 691: "latest" names the newest version this server has, which is v1.
_LATEST = {"application/vnd.pypi.simple.latest+json": PEP691_JSON,
           "application/vnd.pypi.simple.latest+html": _PEP691_HTML}


class RepoHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows the tree it serves."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], root: Path, quiet: bool,
                 log: TextIO | None = None) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.quiet = quiet
        self.log = log  # None: standard error
        self.log_lock = threading.Lock()
        self._active: dict[threading.Thread, socket.socket] = {}
        self._active_lock = threading.Lock()
        super().__init__(address, RepoHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, remembered so that closing can drain them."""
        thread = threading.Thread(target=self._run_connection, args=(request, client_address),
                                  daemon=True)
        with self._active_lock:
            self._active[thread] = request
        thread.start()

    def _run_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active.pop(threading.current_thread(), None)

    def server_close(self, grace: float = 5.0) -> None:
        """Stop listening, end idle keep-alive connections, and give responses under way up to
        ``grace`` seconds to finish (and be logged) before giving up on them."""
        super().server_close()
        with self._active_lock:
            active = dict(self._active)
        for conn in active.values():
            try:
                conn.shutdown(socket.SHUT_RD)  # a handler waiting for a request sees EOF
            except OSError:
                pass
        deadline = time.monotonic() + grace
        for thread in active:
            thread.join(max(0.0, deadline - time.monotonic()))


class _IPv6Server(RepoHTTPServer):
    address_family = socket.AF_INET6


# -- request path --------------------------------------------------------------------------
def split_request_path(raw: str) -> tuple[list[str], bool] | None:
    """The decoded segments of a request target and whether it ends with "/"; None for a
    target that could name something outside the tree or hidden in it."""
    if raw.startswith(("http://", "https://")):  # absolute-form (a proxy's request)
        raw = urlsplit(raw).path or "/"
    raw = raw.split("?", 1)[0].split("#", 1)[0]
    if not raw.startswith("/"):
        return None
    lowered = raw.lower()
    # An encoded slash, backslash or NUL has no business in a path of this tree.
    if any(bad in lowered for bad in ("%2f", "%5c", "%00", "\\")):
        return None
    try:
        path = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return None
    if _CONTROL.search(path) or "\\" in path:
        return None
    segments = [s for s in path.split("/") if s]
    for seg in segments:
        if seg.startswith("."):  # ".", "..", dot-files, dot-folders (.repobuild/)
            return None
    return segments, path.endswith("/")


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split(os.sep) if part)


# -- Accept --------------------------------------------------------------------------------
def _accept_ranges(header: str) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for item in header.split(","):
        fields = [f.strip() for f in item.split(";")]
        media = fields[0].lower()
        media = _LATEST.get(media, media)
        if "/" not in media:
            continue
        q = 1.0
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = -1.0
        if 0.0 <= q <= 1.0:
            out.append((media, q))
    return out


def _quality(offered: str, ranges: list[tuple[str, float]]) -> tuple[float, int]:
    """(q, specificity) of the most specific range that matches ``offered``."""
    major = offered.split("/", 1)[0]
    best: tuple[int, float] | None = None
    for media, q in ranges:
        if media == offered:
            spec = 2
        elif media == f"{major}/*":
            spec = 1
        elif media == "*/*":
            spec = 0
        else:
            continue
        if best is None or spec > best[0]:
            best = (spec, q)
    return (0.0, -1) if best is None else (best[1], best[0])


def prefers_pep691_json(accept: str | None) -> bool:
    """Whether a client's Accept header prefers the PEP 691 JSON form of a simple page.

    No header, ``*/*``, ``text/html`` and ``application/vnd.pypi.simple.v1+html`` get HTML
    (PEP 503 pages are the default); JSON wins a tie only when the client named it (or
    ``application/*``), never through ``*/*``.
    """
    if not accept:
        return False
    ranges = _accept_ranges(accept)
    json_q, json_spec = _quality(PEP691_JSON, ranges)
    html_q = max(_quality(_PEP691_HTML, ranges)[0], _quality("text/html", ranges)[0])
    if json_q <= 0.0:
        return False
    if json_q > html_q:
        return True
    return json_q == html_q and json_spec >= 1


# -- Range ---------------------------------------------------------------------------------
class Unsatisfiable(Exception):
    pass


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The one byte range (first, last inclusive) a ``Range`` header asks for; None to send
    the whole file (no, malformed or multiple ranges); raises :class:`Unsatisfiable`."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or not (first_s.isdigit() or first_s == "") or not (
        last_s.isdigit() or last_s == ""
    ):
        return None
    if first_s == "":
        if last_s == "":
            return None
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size - 1
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None  # invalid: ignored, as RFC 9110 says
    if first >= size:
        raise Unsatisfiable
    last = int(last_s) if last_s else size - 1
    return first, min(last, size - 1)


def _etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    if header.strip() == "*":
        return True
    for tag in header.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            if not weak:
                continue
            tag = tag[2:]
        if tag == etag:
            return True
    return False


def _http_date(header: str) -> float | None:
    try:
        return parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def content_etag(rel: str, st: os.stat_result) -> str:
    """A strong ETag: the SHA-256 a content-addressed path names, else size, mtime, inode."""
    parts = rel.split("/")
    if (len(parts) == 5 and parts[:2] == ["blobs", "sha256"] and _HEX64.fullmatch(parts[3])
            and parts[2] == parts[3][:2]):
        return f'"{parts[3]}.metadata"' if parts[4].endswith(".metadata") else f'"{parts[3]}"'
    if len(parts) >= 3 and parts[-3] == "by-hash" and parts[-2] == "SHA256" and _HEX64.fullmatch(
        parts[-1]
    ):
        return f'"{parts[-1]}"'
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"'


# -- handler -------------------------------------------------------------------------------
class RepoHandler(BaseHTTPRequestHandler):
    server: RepoHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "repobuild-serve"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection is closed after this

    _status: int = 0
    _sent: int = 0
    _started: bool = False

    # Every other method gets 405, not http.server's 501.
    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _not_allowed(self) -> None:
        self._status, self._sent, self._started = 0, 0, False
        self._reply_text(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed\n",
                         extra={"Allow": "GET, HEAD"})
        self._access_log()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    # -- logging ---------------------------------------------------------------------------
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _access_log writes one line per request, with the bytes sent

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        if self.server.quiet:
            return
        text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", format % args)
        stream = self.server.log or sys.stderr
        with self.server.log_lock:
            stream.write(f"{self.address_string()} - - [{self.log_date_time_string()}] {text}\n")
            stream.flush()

    def _access_log(self) -> None:
        agent = self.headers.get("User-Agent", "-") if self.headers else "-"
        self.log_message('"%s" %s %s "%s"', self.requestline, self._status, self._sent, agent)

    # -- responses -------------------------------------------------------------------------
    def _start(self, status: int, headers: dict[str, str]) -> None:
        self._status, self._started = int(status), True
        self.send_response_only(status)
        self.send_header("Date", formatdate(usegmt=True))
        self.send_header("Server", self.server_version)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _reply_text(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
        body = text.encode()
        headers = {"Content-Type": "text/plain; charset=utf-8",
                   "Content-Length": str(len(body)), "Cache-Control": "no-store",
                   "X-Content-Type-Options": "nosniff", **(extra or {})}
        self._start(status, headers)
        if self.command != "HEAD":
            self.wfile.write(body)
            self._sent = len(body)

    def _not_found(self) -> None:
        self._reply_text(HTTPStatus.NOT_FOUND, "not found\n")

    # -- the request -----------------------------------------------------------------------
    def _handle(self, *, head: bool) -> None:
        self._status, self._sent, self._started = 0, 0, False
        try:
            self._serve(head=head)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # a bug or an I/O error: answer 500, keep serving
            self.log_message("error: %r", exc)
            self.close_connection = True
            if not self._started:
                self._reply_text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")
        finally:
            self._access_log()

    def _resolve(self, segments: list[str]) -> str | None:
        """The real path of ``segments`` under the root, or None when it escapes the root
        (a symlink out of it), is hidden, or does not exist."""
        root = self.server.real_root
        real = os.path.realpath(os.path.join(root, *segments))
        if real != root and not real.startswith(root + os.sep):
            return None
        if (real != root and _hidden(os.path.relpath(real, root))) or not os.path.exists(real):
            return None
        return real

    def _serve(self, *, head: bool) -> None:
        parsed = split_request_path(self.path)
        if parsed is None:
            self._not_found()
            return
        segments, slash = parsed
        real = self._resolve(segments)
        if real is None:
            self._not_found()
            return
        vary = False
        if os.path.isdir(real):
            if not slash:
                # Relative, so it works behind any prefix and can never leave this host.
                target = "./" + quote(segments[-1], safe="") + "/"
                query = self.path.partition("?")[2]
                self._reply_text(HTTPStatus.MOVED_PERMANENTLY, f"moved to {target}\n",
                                 extra={"Location": target + (f"?{query}" if query else ""),
                                        "Cache-Control": cache_control("/".join(segments))})
                return
            names = ["index.html"]
            if segments[:1] == ["simple"]:
                vary = True
                if prefers_pep691_json(self.headers.get("Accept")):
                    names.insert(0, "index.json")
            for name in names:
                index = self._resolve([*segments, name])
                if index is not None and os.path.isfile(index):
                    segments, real = [*segments, name], index
                    break
            else:
                self._not_found()  # no directory listings
                return
        elif slash:
            self._not_found()  # a file named as a folder
            return
        self._send_file(real, "/".join(segments), head=head, vary=vary)

    def _send_file(self, real: str, rel: str, *, head: bool, vary: bool) -> None:
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
        flags |= getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(real, flags)
        except OSError:
            self._not_found()
            return
        with os.fdopen(fd, "rb", buffering=0) as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):  # a FIFO, device or socket planted in the tree
                self._not_found()
                return
            real_rel = os.path.relpath(real, self.server.real_root).replace(os.sep, "/")
            etag = content_etag(real_rel, st)
            headers = {
                "Cache-Control": cache_control(rel),
                "ETag": etag,
                "Last-Modified": formatdate(st.st_mtime, usegmt=True),
                "Accept-Ranges": "bytes",
                "X-Content-Type-Options": "nosniff",
            }
            if vary:
                headers["Vary"] = "Accept"
            if self._not_modified(etag, st.st_mtime):
                self._start(HTTPStatus.NOT_MODIFIED, headers)
                return
            size = st.st_size
            headers["Content-Type"] = content_type(rel)
            span = self._range(etag, st.st_mtime, size)
            if isinstance(span, str):
                headers.pop("Content-Type")
                self._reply_text(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                                 "range not satisfiable\n",
                                 extra={**headers, "Content-Range": f"bytes */{size}",
                                        "Cache-Control": "no-store"})
                return
            if span is None:
                first, length, status = 0, size, HTTPStatus.OK
            else:
                first, last = span
                length, status = last - first + 1, HTTPStatus.PARTIAL_CONTENT
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            headers["Content-Length"] = str(length)
            self._start(status, headers)
            if not head:
                self._copy(fh, first, length)

    def _not_modified(self, etag: str, mtime: float) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            return _etag_matches(inm, etag, weak=True)
        ims = self.headers.get("If-Modified-Since")
        if ims is not None:
            when = _http_date(ims)
            return when is not None and int(mtime) <= when
        return False

    def _range(self, etag: str, mtime: float, size: int) -> tuple[int, int] | str | None:
        header = self.headers.get("Range")
        if header is None:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None:
            if_range = if_range.strip()
            if if_range.startswith(('"', "W/")):
                if not _etag_matches(if_range, etag, weak=False):
                    return None  # changed since: the whole file
            else:
                when = _http_date(if_range)
                if when is None or int(mtime) != int(when):
                    return None
        try:
            return parse_range(header, size)
        except Unsatisfiable:
            return "unsatisfiable"

    def _copy(self, fh: IO[bytes], first: int, length: int) -> None:
        fh.seek(first)
        left = length
        while left > 0:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:  # the file shrank under us: the client sees a short body
                self.close_connection = True
                break
            self.wfile.write(chunk)
            left -= len(chunk)
            self._sent += len(chunk)


# -- server --------------------------------------------------------------------------------
def make_server(root: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000,
                quiet: bool = False, log: TextIO | None = None) -> ThreadingHTTPServer:
    """A server for the tree at ``root``, bound and listening but not yet serving
    (``serve_forever()`` in a thread; port 0 picks a free port: ``server_address[1]``).
    One access-log line per request goes to ``log`` (standard error) unless ``quiet``."""
    path = Path(root)
    if not 0 <= port <= 65535:
        raise UsageError(f"port {port} is not between 0 and 65535")
    if not path.is_dir():
        raise UsageError("not a folder to serve", path)
    cls = _IPv6Server if ":" in host else RepoHTTPServer
    try:
        return cls((host, port), path, quiet, log)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@contextmanager
def _stop_on_signals(httpd: ThreadingHTTPServer) -> Iterator[None]:
    """SIGTERM and SIGINT ask serve_forever to return (from a helper thread: shutdown() waits
    for the loop, which runs in this one). Raising from the handler instead could be lost:
    socketserver reports and swallows any Exception raised while it dispatches a request."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    asked = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if not asked.is_set():
            asked.set()
            threading.Thread(target=httpd.shutdown, name="repobuild-stop", daemon=True).start()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve(root: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000,
          quiet: bool = False) -> None:
    """Serve ``root`` until SIGTERM or SIGINT (Ctrl-C); returns after a clean shutdown."""
    httpd = make_server(root, host, port, quiet=quiet)
    bound_host, bound_port = str(httpd.server_address[0]), httpd.server_address[1]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    base = f"http://{shown}:{bound_port}/"
    sys.stderr.write(
        f"repobuild: serving {Path(root)} at {base} (Ctrl-C stops)\n"
        f"  apt: deb [signed-by=/etc/apt/keyrings/repo.gpg] {base} stable main\n"
        f"  pip: pip install --index-url {base}simple/ NAME\n"
    )
    sys.stderr.flush()
    started = time.monotonic()
    try:
        with _stop_on_signals(httpd):
            try:
                httpd.serve_forever(poll_interval=0.1)
            except KeyboardInterrupt:  # serving outside the main thread: no handler of ours
                pass
    finally:
        httpd.server_close()
    sys.stderr.write(f"repobuild: stopped after {time.monotonic() - started:.0f}s\n")


__all__ = ["RepoHTTPServer", "make_server", "parse_range", "prefers_pep691_json",
           "serve", "split_request_path"]
