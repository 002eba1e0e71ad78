"""Limits every request meets before routing: the body's size, and text PostgreSQL cannot
store in the path or the query (a NUL, ``%00``, would otherwise reach a query as a 500).

A plain ASGI middleware: the body is read once, up to ``max_body_bytes`` (413 beyond, whatever
``Content-Length`` claims), and replayed to the app.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gradlab.science.bounds import text_problem

BODY_METHODS = {"POST", "PUT", "PATCH"}


async def _answer(send: Send, status: int, body: dict[str, object]) -> None:
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode())],
    })
    await send({"type": "http.response.body", "body": payload})


def _unstorable(scope: Scope) -> tuple[str, str] | None:
    """(field, reason) for the first path or query text that cannot be stored."""
    problem = text_problem(scope.get("path", ""))
    if problem is not None:
        return "path", problem
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True):
        for text in (name, value):
            problem = text_problem(text)
            if problem is not None:
                return name if text_problem(name) is None else "query", problem
    return None


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bad = _unstorable(scope)
        if bad is not None:
            field, reason = bad
            await _answer(send, 422, {"type": "validation_error", "detail": f"{field}: {reason}",
                                      "errors": [{"field": field, "reason": reason}]})
            return
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        body = None if self._declared_too_large(scope) else await self._read_body(receive)
        if body is None:
            await _answer(send, 413, {
                "type": "payload_too_large",
                "detail": f"the body is larger than {self.max_body_bytes} bytes "
                          "(GRADLAB_MAX_REQUEST_BYTES)",
            })
            return
        await self.app(scope, _replay(body, receive), send)

    def _declared_too_large(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                return not value.isdigit() or int(value) > self.max_body_bytes
        return False

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then whatever comes next (a disconnect)

    return replay
