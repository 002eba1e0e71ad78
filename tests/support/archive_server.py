"""A real HTTP server on 127.0.0.1 (a free port, its own thread) serving files from memory, as a
mirror of the CIFAR archives would: with HTTP Range (206 and Content-Range) unless told not
to, and able to break a response off midway as a dropped connection does. It records every
request, so a test can tell what was asked for and how many bytes went out."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass
class Served:
    """One request: the path, its Range header (None: none), the status and bytes sent."""

    path: str
    range: str | None
    status: int
    sent: int


class ArchiveServer:
    """``with ArchiveServer({"name.tar.gz": blob}) as server: server.url`` (the folder URL).

    ``break_after``: the next full (200) response stops after that many body bytes and the
    connection closes, its Content-Length promising the whole file. ``ranges=False``: Range
    headers are ignored (every answer is the whole file, 200).
    """

    def __init__(self, files: dict[str, bytes], *, ranges: bool = True) -> None:
        self.files = files
        self.ranges = ranges
        self.break_after: int | None = None
        self.served: list[Served] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/mirror"

    def __enter__(self) -> ArchiveServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def _record(self, served: Served) -> None:
        with self._lock:
            self.served.append(served)

    def _take_break(self) -> int | None:
        with self._lock:
            cut, self.break_after = self.break_after, None
            return cut

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the test reads server.served

            def do_GET(self) -> None:
                name = self.path.removeprefix("/mirror/")
                body = server.files.get(name)
                asked = self.headers.get("Range")
                if body is None:
                    self.send_error(404)
                    server._record(Served(self.path, asked, 404, 0))
                    return
                start = _range_start(asked) if server.ranges else None
                if start is not None and start >= len(body):
                    self.send_error(416)
                    server._record(Served(self.path, asked, 416, 0))
                    return
                status = 200 if start is None else 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - (start or 0)))
                if start is not None:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                part = body[start or 0:]
                cut = server._take_break() if status == 200 else None
                if cut is not None:
                    part = part[:cut]  # then the connection closes: HTTP/1.0, one per request
                # Recorded before a byte goes out: the client cannot be done with it sooner.
                server._record(Served(self.path, asked, status, len(part)))
                self.wfile.write(part)

        return Handler


def _range_start(header: str | None) -> int | None:
    if not header or not header.startswith("bytes=") or not header.endswith("-"):
        return None
    start = header.removeprefix("bytes=").removesuffix("-")
    return int(start) if start.isdigit() else None
