"""The server's outermost layer (pure ASGI, around every route): request id, access log with latency, API
key, request body limit, and the last-resort 500 (the exception is logged with the request id; the server
keeps serving). A client that leaves before a response is logged as 499, not as a server error. What the
client sent is escaped before it is logged (:func:`loggable`)."""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.requests import ClientDisconnect

from clir.serve.config import ServeSettings
from clir.serve.page import PAGE_PATHS
from clir.serve.schemas import error_body

log = logging.getLogger(__name__)
access_log = logging.getLogger("clir.serve.access")

API_KEY_HEADER = "X-API-Key"
#: reachable without the API key: probes and the API's own description (no data)
OPEN_PATHS = {"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json", *PAGE_PATHS}
#: the /docs page's own assets, served from the swagger-ui-bundle package (no CDN: machines may be offline)
DOCS_ASSETS = "/docs/assets"
#: logged for a request whose client went away before a response (nginx's code): not a server error
CLIENT_CLOSED = 499


def _json_bytes(status: int, detail: Any, request_id: str | None = None) -> bytes:
    return json.dumps(error_body(status, detail, request_id=request_id), ensure_ascii=False).encode()


async def _send_json(
    send, status: int, payload: bytes, extra_headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *extra_headers]})
    await send({"type": "http.response.body", "body": payload})


def loggable(text: str) -> str:
    """``text`` as one log field: control and other unprintable characters, quotes and backslashes escaped
    (``\\n``, ``\\x1b``, ``\\"``). A path is logged URL-decoded: ``/indexes%0A02:00:00 INFO ...`` wrote a
    second, forged log line, and ``%1B`` sent escape sequences to the terminal reading the log."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c not in '"\\' else _escaped(c) for c in text)


def _escaped(c: str) -> str:
    return '\\"' if c == '"' else c.encode("unicode_escape").decode("ascii")


def key_matches(given: str | None, key: str) -> bool:
    """Whether the ``X-API-Key`` a request gives is the server's key (compared in constant time)."""
    return bool(given) and hmac.compare_digest(str(given).encode(), key.encode())


def _request_id(headers: dict[str, str]) -> str:
    """The client's ``X-Request-ID`` when it is a plain token of at most 64 characters, else a fresh one."""
    rid = headers.get("x-request-id", "")
    if not (0 < len(rid) <= 64 and rid.replace("-", "").replace("_", "").isalnum()):
        rid = uuid.uuid4().hex[:16]
    return rid


class Guard:
    """ASGI middleware: see the module docstring. ``api_key`` None: no key is asked for."""

    def __init__(self, app, *, api_key: str | None, settings: ServeSettings) -> None:
        self.app = app
        self.api_key = api_key
        self.settings = settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = _request_id(headers)
        scope.setdefault("state", {})["request_id"] = rid
        status_box = {"status": 0, "started": False}
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapped(message) -> None:
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
                status_box["started"] = True
                message = {**message, "headers": [*message.get("headers", []), rid_header]}
            await send(message)

        try:
            if await self._refused_key(scope, headers, send_wrapped):
                return
            receive = await self._limited_body(scope, receive, headers, send_wrapped)
            if receive is None:
                if not status_box["started"]:  # the client left mid-body: nothing was sent
                    status_box["status"] = CLIENT_CLOSED
                return
            await self.app(scope, receive, send_wrapped)
        except ClientDisconnect:
            status_box["status"] = status_box["status"] or CLIENT_CLOSED
        except Exception:
            log.exception(
                "request %s %s failed (request id %s)",
                loggable(str(scope.get("method"))),
                loggable(str(scope.get("path"))),
                rid,
            )
            if not status_box["started"]:
                await _send_json(
                    send_wrapped, 500, _json_bytes(500, f"internal server error (request id {rid})", rid)
                )
        finally:
            if self.settings.access_log:
                client = scope.get("client") or ("-", 0)
                access_log.info(
                    '%s "%s %s" %d %.1fms rid=%s',
                    loggable(str(client[0])),  # behind a proxy, the address may come from a header
                    loggable(str(scope.get("method"))),
                    loggable(str(scope.get("path"))),  # no query string: it may hold the user's query text
                    status_box["status"] or 500,
                    (time.perf_counter() - t0) * 1000,
                    rid,
                )

    async def _refused_key(self, scope, headers: dict[str, str], send) -> bool:
        """Answer 401 (and return True) when the server has a key, the path needs it and the request lacks it."""
        path = scope.get("path", "")
        if self.api_key is None or path in OPEN_PATHS or path.startswith(DOCS_ASSETS + "/"):
            return False
        given = headers.get(API_KEY_HEADER.lower(), "")
        if key_matches(given, self.api_key):
            return False
        detail = f"missing {API_KEY_HEADER} header" if not given else f"wrong {API_KEY_HEADER}"
        await _send_json(send, 401, _json_bytes(401, detail), [(b"www-authenticate", b"APIKey")])
        return True

    async def _limited_body(self, scope, receive, headers, send):
        """Read the body up to the limit (413 beyond it, whether or not Content-Length is declared), then
        replay it to the app."""
        limit = self.settings.max_body_bytes
        too_big = _json_bytes(413, f"request body larger than {limit} bytes (max_body_bytes)")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_json(send, 413, too_big)
            return None
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE") and declared in (None, "0"):
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_json(send, 413, too_big)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay
