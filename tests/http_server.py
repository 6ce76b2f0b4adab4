"""A small HTTP server on 127.0.0.1 for tests: serves bytes from a dict, with fault injection.

    with LocalHTTPServer({"/a.zip": data}) as server:
        server.cut_next("/a.zip", after=100)    # next GET of /a.zip: close after 100 bytes
        server.fail_next("/a.zip", 503, times=2)  # then answer 503 twice
        url = server.url("/a.zip")
        ...
        server.requests  # [Request(method, path, range), ...] in arrival order

``Range: bytes=N-`` (and ``bytes=N-M``) is answered with 206 + ``Content-Range``, or 416 when
N is past the end; ``honor_range = False`` makes the server ignore it (always 200); ``send_length = False``
sends 200 replies without ``Content-Length`` (the body ends when the connection closes).
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None


class LocalHTTPServer:
    def __init__(self, files: dict[str, bytes] | None = None, *, cut_first: dict[str, int] | None = None):
        """``cut_first={path: K}``: the first GET of ``path`` is cut after K body bytes."""
        self.files: dict[str, bytes] = dict(files or {})
        self.requests: list[Request] = []
        self.honor_range = True
        self.send_length = True
        self._cuts: dict[str, list[int]] = {p: [k] for p, k in (cut_first or {}).items()}
        self._failures: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- configuration -------------------------------------------------------------------
    def cut_next(self, path: str, after: int) -> None:
        """The next GET of ``path`` sends full headers, ``after`` body bytes, then closes."""
        with self._lock:
            self._cuts.setdefault(path, []).append(after)

    def fail_next(self, path: str, status: int = 503, times: int = 1) -> None:
        """The next ``times`` GETs of ``path`` are answered with ``status`` and no body."""
        with self._lock:
            self._failures.setdefault(path, []).extend([status] * times)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> LocalHTTPServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request a connection: a cut is a plain close

            def log_message(self, format, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                rng = self.headers.get("Range")
                with server._lock:
                    server.requests.append(Request(self.command, path, rng))
                    failures = server._failures.get(path)
                    status_fail = failures.pop(0) if failures else None
                    data = server.files.get(path)
                    cuts = server._cuts.get(path)
                    cut = cuts.pop(0) if (cuts and body and data is not None) else None
                    honor = server.honor_range
                    send_length = server.send_length
                if status_fail is not None:
                    self.send_response(status_fail)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if data is None:
                    self.send_error(404)
                    return
                start, end, status = 0, len(data), 200
                if rng and honor:
                    m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                    if m:
                        start = int(m.group(1))
                        if start >= len(data):
                            self.send_response(416)
                            self.send_header("Content-Range", f"bytes */{len(data)}")
                            self.send_header("Content-Length", "0")
                            self.end_headers()
                            return
                        if m.group(2):
                            end = min(int(m.group(2)) + 1, len(data))
                        status = 206
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                if send_length or status == 206:
                    self.send_header("Content-Length", str(end - start))
                if honor:
                    self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                payload = data[start:end]
                if cut is not None:
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name="LocalHTTPServer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalHTTPServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def url(self, path: str) -> str:
        return self.base_url + path.lstrip("/")

    def requests_for(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)


def unused_port() -> int:
    """A loopback port with nobody listening (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
