"""The FastAPI app behind ``clir serve``: search any loaded index with the encoder from its manifest.

Routes: the search page at ``/`` (clir.serve.page), ``/health``, ``/ready``, ``/indexes``, ``POST|GET /search``,
``POST /search/batch``, ``/indexes/{name}/docs/{doc_id}``, OpenAPI at ``/docs``. Every error is JSON ``{"error", "detail"}``; client
errors are 4xx, an internal failure is a 500 carrying a request id that is also in the log."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from clir.errors import ClirError, NotFoundError
from clir.serve.batching import Job, MicroBatcher, Result, run_jobs
from clir.serve.config import MAX_K, ServeSettings, check_name
from clir.serve.page import PAGE_PATHS, add_page_routes

log = logging.getLogger(__name__)
access_log = logging.getLogger("clir.serve.access")

API_KEY_HEADER = "X-API-Key"
#: reachable without the API key: probes and the API's own description (no data)
OPEN_PATHS = {"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json", *PAGE_PATHS}
#: the /docs page's own assets, served from the swagger-ui-bundle package (no CDN: machines may be offline)
DOCS_ASSETS = "/docs/assets"
#: logged for a request whose client went away before a response (nginx's code): not a server error
CLIENT_CLOSED = 499
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "invalid_request",
    500: "internal_error",
    503: "unavailable",
}


# ---------------------------------------------------------------------- request / response bodies
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field ("topk") is an error, not silently ignored


def _nonblank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty or whitespace")
    return _unicode(v)


def _unicode(v: str) -> str:
    """The one rule for text (as in clir.data.check_text): a lone surrogate (``"\\ud800"``) is refused."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"invalid Unicode: lone surrogate at character {e.start + 1}") from None
    return v


class SearchRequest(_Strict):
    query: str = Field(
        description="query text (longer than the encoder's limit: truncated, and `truncated` says so)"
    )
    k: int = Field(10, ge=1, le=MAX_K, description="hits to return")
    index: str | None = Field(None, description="index name (default: the server's default index)")
    query_lang: str = Field(
        "en", min_length=1, max_length=32, description="language of the query (adapter routing)"
    )
    return_text: bool = Field(True, description="include each hit's stored text")

    _check_query = field_validator("query")(_nonblank)
    _check_lang = field_validator("query_lang")(_nonblank)


class BatchSearchRequest(_Strict):
    queries: list[str] = Field(min_length=1, description="query texts")
    k: int = Field(10, ge=1, le=MAX_K)
    index: str | None = None
    query_lang: str = Field("en", min_length=1, max_length=32)
    return_text: bool = False

    @field_validator("queries")
    @classmethod
    def _check_queries(cls, v: list[str]) -> list[str]:
        blank = [i for i, q in enumerate(v) if not q.strip()]
        if blank:
            raise ValueError(f"queries {blank[:10]} are empty or whitespace")
        for i, q in enumerate(v):
            try:
                _unicode(q)
            except ValueError as e:
                raise ValueError(f"query {i}: {e}") from None
        return v

    _check_lang = field_validator("query_lang")(_nonblank)


class PassageOut(BaseModel):
    id: str = Field(description="the passage's row id (docid#n)")
    index: int = Field(description="passage number in the document, from 0")
    start: int = Field(description="character offset of the passage in the document's text")
    end: int
    text: str | None = None


class HitOut(BaseModel):
    rank: int
    doc_id: str
    score: float
    text: str | None = None
    title: str | None = None
    lang: str | None = Field(None, description="the document's language (with the text)")
    passage: PassageOut | None = Field(None, description="split documents: the best-scoring passage")


class SearchResponse(BaseModel):
    index: str
    hits: list[HitOut]
    took_ms: float
    query_tokens: int = Field(description="query tokens the encoder used")
    truncated: bool = Field(description="the query was longer than the encoder's limit and was cut")
    warning: str | None = None


class BatchItem(BaseModel):
    hits: list[HitOut]
    query_tokens: int
    truncated: bool


class BatchSearchResponse(BaseModel):
    index: str
    results: list[BatchItem]
    took_ms: float


class ErrorResponse(BaseModel):
    error: str
    detail: Any
    request_id: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse}
    for code in (401, 404, 413, 422, 500, 503)  # documented on every route in /docs
}


# ---------------------------------------------------------------------- loading
def load_searchers(indexes: Mapping[str, Any], *, device: str | None = None) -> dict[str, Any]:
    """Open each index (a folder, or a ready ``Searcher``) with the encoder its manifest names; indexes whose
    manifests name the same encoder source and settings share one loaded model."""
    from clir.index import store
    from clir.search import Searcher

    if not indexes:
        raise ClirError("no index to serve: pass --index [NAME=]DIR (or indexes: in --config)")
    shared: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for name, src in indexes.items():
        check_name(name)
        if isinstance(src, Searcher):
            out[name] = src
            continue
        manifest = store.read_manifest(src)
        key = json.dumps(manifest.get("model"), sort_keys=True, default=str)
        searcher = Searcher(src, encoder=shared.get(key), device=device, manifest=manifest)
        if key not in shared:
            log.info("loaded encoder %s for index %s", manifest["model"].get("source"), name)
        shared.setdefault(key, searcher.encoder)
        out[name] = searcher
        log.info("index %s: %s (%d documents)", name, src, searcher.num_docs)
    return out


class _State:
    def __init__(self, searchers: dict[str, Any], settings: ServeSettings, api_key: str | None) -> None:
        self.settings = settings
        self.searchers = searchers
        self.default = settings.default_index or next(iter(searchers))
        if self.default not in searchers:
            raise ClirError(
                f"default index {self.default!r} is not among the served ({', '.join(searchers)})"
            )
        self.api_key = api_key
        self.ready = False
        # one batcher per loaded encoder: indexes sharing a model share its queue
        self.batchers: dict[int, MicroBatcher] = {}
        for s in searchers.values():
            if settings.micro_batching and id(s.encoder) not in self.batchers:
                self.batchers[id(s.encoder)] = MicroBatcher(
                    s.encoder,
                    max_batch=settings.max_batch_size,
                    window_ms=settings.batch_window_ms,
                    max_pending=settings.max_pending,
                    exact=settings.exact_batching,
                )

    def get(self, name: str | None) -> tuple[str, Any]:
        name = name or self.default
        searcher = self.searchers.get(name)
        if searcher is None:
            raise NotFoundError(f"unknown index {name!r} (served: {', '.join(self.searchers)})")
        return name, searcher

    async def warm_up(self) -> None:
        """One query per encoder, so the first request does not pay for lazy initialisation."""
        seen = set()
        for s in self.searchers.values():
            if id(s.encoder) not in seen:
                seen.add(id(s.encoder))
                (res,) = await asyncio.to_thread(run_jobs, s.encoder, [Job(s, "warm up", 1, "en")])
                if isinstance(res, BaseException):
                    raise res


# ---------------------------------------------------------------------- middleware (pure ASGI)
def _json_bytes(status: int, detail: Any, request_id: str | None = None, error: str | None = None) -> bytes:
    body = {"error": error or ERROR_CODES.get(status, "error"), "detail": detail}
    if request_id:
        body["request_id"] = request_id
    return json.dumps(body, ensure_ascii=False).encode()


async def _send_json(
    send, status: int, payload: bytes, extra_headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *extra_headers]})
    await send({"type": "http.response.body", "body": payload})


class _Guard:
    """Outermost layer: request id, access log with latency, API key, body size limit, and the last-resort
    500 (the exception is logged with the request id; the server keeps serving)."""

    def __init__(self, app, state: _State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        if not (0 < len(rid) <= 64 and rid.replace("-", "").replace("_", "").isalnum()):
            rid = uuid.uuid4().hex[:16]
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
            path = scope.get("path", "")
            if (
                self.state.api_key is not None
                and path not in OPEN_PATHS
                and not path.startswith(DOCS_ASSETS + "/")
            ):
                given = headers.get(API_KEY_HEADER.lower(), "")
                if not given or not hmac.compare_digest(given.encode(), self.state.api_key.encode()):
                    detail = f"missing {API_KEY_HEADER} header" if not given else f"wrong {API_KEY_HEADER}"
                    await _send_json(
                        send_wrapped, 401, _json_bytes(401, detail), [(b"www-authenticate", b"APIKey")]
                    )
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
            log.exception("request %s %s failed (request id %s)", scope.get("method"), scope.get("path"), rid)
            if not status_box["started"]:
                await _send_json(
                    send_wrapped, 500, _json_bytes(500, f"internal server error (request id {rid})", rid)
                )
        finally:
            if self.state.settings.access_log:
                client = scope.get("client") or ("-", 0)
                access_log.info(
                    '%s "%s %s" %d %.1fms rid=%s',
                    client[0],
                    scope.get("method"),
                    scope.get("path"),  # no query string: it may hold the user's query text
                    status_box["status"] or 500,
                    (time.perf_counter() - t0) * 1000,
                    rid,
                )

    async def _limited_body(self, scope, receive, headers, send):
        """Read the body up to the limit (413 beyond it, whether or not Content-Length is declared), then
        replay it to the app."""
        limit = self.state.settings.max_body_bytes
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


# ---------------------------------------------------------------------- the app
def create_app(indexes: Mapping[str, Any], settings: ServeSettings | None = None) -> FastAPI:
    """The REST app over ``indexes`` (name -> index folder or ``Searcher``). Indexes load here, once."""
    settings = settings or ServeSettings()
    settings.validate()
    api_key = settings.api_key()  # before loading models: an unset key variable fails at once
    state = _State(load_searchers(indexes, device=settings.device), settings, api_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.warm_up()
        state.ready = True
        log.info(
            "serving %s (default %s); micro-batching %s",
            ", ".join(state.searchers),
            state.default,
            "on" if settings.micro_batching else "off",
        )
        yield
        state.ready = False
        for b in state.batchers.values():
            await b.stop()

    app = FastAPI(
        title="clir",
        version=_version(),
        description="Cross-language dense retrieval: search FAISS indexes with the adapter-based encoder "
        "recorded in each index's manifest. Errors are JSON `{error, detail}`.",
        lifespan=lifespan,
        docs_url=None,  # served below with local assets
        redoc_url=None,  # ReDoc exists only on a CDN
    )
    _add_docs(app)
    app.state.clir = state
    key_doc = Security(
        APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="when the server has a key")
    )

    # ---------------- errors: one JSON shape for all of them
    @app.exception_handler(ClirError)
    async def _clir_error(request: Request, exc: ClirError):
        return _error_response(exc.status, str(exc), request)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _error_response(422, _validation_detail(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error_response(exc.status_code, exc.detail, request, headers=getattr(exc, "headers", None))

    # ---------------- probes and metadata
    @app.head("/health", include_in_schema=False)  # monitoring tools probe with HEAD
    async def health_head() -> Response:
        return Response()

    @app.get("/health", tags=["probes"], summary="liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        tags=["probes"],
        summary="readiness: indexes loaded and the encoder warmed up",
        responses=_ERRORS,
    )
    async def ready():
        if not state.ready:
            return _error_response(503, "indexes are loading", None, error="not_ready")
        return {"status": "ready", "indexes": list(state.searchers)}

    @app.get("/indexes", tags=["indexes"], summary="served indexes", responses=_ERRORS)
    async def list_indexes(_key: str | None = key_doc) -> dict[str, Any]:
        out = []
        for name, s in state.searchers.items():
            m = s.manifest
            out.append(
                {
                    "name": name,
                    "default": name == state.default,
                    "num_docs": s.num_docs,
                    "languages": sorted(k for k in (m.get("doc_langs") or {}) if k != "unknown")
                    or ([m["doc_lang"]] if m.get("doc_lang") else []),
                    "doc_langs": m.get("doc_langs") or {},
                    "collection": m.get("collection"),
                    "factory": m.get("factory"),
                    "dim": m.get("dim"),
                    "model": (m.get("model") or {}).get("source"),
                    "encoder_fingerprint": m.get("encoder"),
                    "created": m.get("created"),
                }
            )
        return {"indexes": out}

    @app.get(
        "/indexes/{name}/docs/{doc_id:path}",
        tags=["indexes"],
        summary="a stored document",
        responses=_ERRORS,
    )
    async def get_doc(name: str, doc_id: str, _key: str | None = key_doc) -> dict[str, Any]:
        name, searcher = state.get(name)
        if not searcher.docstore.available:
            raise NotFoundError(f"index {name!r} has no document store")
        doc = searcher.docstore.get(doc_id)
        return {"index": name, **doc}

    # ---------------- search
    async def search_one(
        name: str | None, query: str, k: int, lang: str, return_text: bool
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        name, searcher = state.get(name)
        job = Job(searcher, query, k, lang)
        batcher = state.batchers.get(id(searcher.encoder))
        if batcher is not None:
            res = await batcher.submit(job)
        else:
            # asyncio's default executor, not Starlette's run_in_threadpool: see clir.serve.batching
            (done,) = await asyncio.to_thread(run_jobs, searcher.encoder, [job])
            if isinstance(done, BaseException):
                raise done
            res = done
        out = {
            "index": name,
            "hits": _hits(searcher, res, return_text),
            "query_tokens": res.tokens,
            "truncated": res.truncated,
        }
        if res.truncated:
            out["warning"] = f"query truncated to the encoder's limit of {res.tokens} tokens"
        out["took_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return out

    @app.post("/search", tags=["search"], summary="search one index", response_model=SearchResponse,
              response_model_exclude_none=True, responses=_ERRORS)  # fmt: skip
    async def search_post(body: SearchRequest, _key: str | None = key_doc):
        return await search_one(body.index, body.query, body.k, body.query_lang, body.return_text)

    @app.get("/search", tags=["search"], summary="search one index (query string)", response_model=SearchResponse,
             response_model_exclude_none=True, responses=_ERRORS)  # fmt: skip
    async def search_get(
        q: str = Query(description="query text"),
        k: int = Query(10, ge=1, le=MAX_K),
        index: str | None = None,
        query_lang: str = Query("en", min_length=1, max_length=32),
        return_text: bool = True,
        _key: str | None = key_doc,
    ):
        try:
            _nonblank(q)
        except ValueError as e:
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("query", "q"), "msg": str(e)}]
            ) from None
        return await search_one(index, q, k, query_lang, return_text)

    @app.post("/search/batch", tags=["search"], summary="many queries in one call",
              response_model=BatchSearchResponse, response_model_exclude_none=True, responses=_ERRORS)  # fmt: skip
    async def search_batch(body: BatchSearchRequest, _key: str | None = key_doc):
        if len(body.queries) > settings.max_batch_queries:
            raise RequestValidationError(
                [
                    {
                        "type": "too_long",
                        "loc": ("body", "queries"),
                        "msg": f"at most {settings.max_batch_queries} queries per call, got {len(body.queries)}",
                    }
                ]
            )
        chars = sum(len(q) for q in body.queries)
        if chars > settings.max_batch_chars:
            raise PayloadTooLarge(
                f"the batch holds {chars} query characters, more than max_batch_chars ({settings.max_batch_chars})"
                ": split it into several calls"
            )
        t0 = time.perf_counter()
        name, searcher = state.get(body.index)
        jobs = [Job(searcher, q, body.k, body.query_lang) for q in body.queries]
        results = []
        step = settings.max_batch_size
        for at in range(0, len(jobs), step):
            # one slice at a time: between slices the encoder is free for single searches, which wait for
            # one slice, not for the whole batch
            results += await asyncio.to_thread(
                run_jobs,
                searcher.encoder,
                jobs[at : at + step],
                batch_size=settings.max_batch_size,
                exact=settings.exact_batching,
            )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        found = [r for r in results if isinstance(r, Result)]
        items = [
            {"hits": _hits(searcher, r, body.return_text), "query_tokens": r.tokens, "truncated": r.truncated}
            for r in found
        ]
        return {"index": name, "results": items, "took_ms": round((time.perf_counter() - t0) * 1000, 3)}

    add_page_routes(app)
    app.add_middleware(_Guard, state=state)
    return app


class PayloadTooLarge(ClirError):
    status = 413


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package's files: works offline."""
    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + app.openapi_url,
            title="clir - API",
            oauth2_redirect_url=root + "/docs/oauth2-redirect",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-32x32.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def docs_redirect():
        return get_swagger_ui_oauth2_redirect_html()


def _hits(searcher: Any, res: Result, return_text: bool) -> list[dict[str, Any]]:
    return [h.as_dict() for h in searcher.hits(res.scores, res.rows, return_text=return_text)]


def _error_response(
    status: int, detail: Any, request: Request | None, *, error: str | None = None, headers=None
) -> JSONResponse:
    rid = request.scope.get("state", {}).get("request_id") if request is not None else None
    body = {"error": error or ERROR_CODES.get(status, "error"), "detail": detail}
    if status >= 500 and rid:
        body["request_id"] = rid
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",)) or "body"
        if err.get("type") == "json_invalid":
            parts.append(f"malformed JSON: {err.get('ctx', {}).get('error', err.get('msg'))}")
        elif tuple(err.get("loc", ())) == ("body",) and err.get("type") in (
            "model_attributes_type",
            "dict_type",
        ):
            parts.append("body: expected a JSON object (send it with Content-Type: application/json)")
        else:
            parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


def _version() -> str:
    from clir import __version__

    return __version__


def app_from_env() -> Any:
    """Factory for ``uvicorn --factory`` (used by ``clir serve --workers N``): indexes and settings come as
    JSON in ``CLIR_SERVE_CONFIG``; the API key itself stays in its own environment variable."""
    import os

    from clir.config import from_dict

    data = json.loads(os.environ["CLIR_SERVE_CONFIG"])
    # a spawned worker process starts with bare logging: give it the parent's level and format
    logging.basicConfig(
        level=data.get("log_level", logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return create_app(
        {n: str(Path(p)) for n, p in data["indexes"].items()}, from_dict(ServeSettings, data["settings"])
    )
