"""The REST routes, registered on the app by :func:`clir.serve.app.create_app`: probes, index metadata,
stored documents, and search (one query, GET or POST, and batches). Errors leave as one JSON shape."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException

from clir.errors import ClirError, NotFoundError
from clir.model.protocol import Encoder
from clir.serve.batching import Job, Result, run_jobs
from clir.serve.config import MAX_K
from clir.serve.guard import API_KEY_HEADER, CLIENT_CLOSED, key_matches
from clir.serve.schemas import (
    ERRORS,
    QUERY_ROUTING_DOC,
    BatchSearchRequest,
    BatchSearchResponse,
    QueryRouting,
    SearchRequest,
    SearchResponse,
    error_body,
    nonblank,
)
from clir.serve.state import ServeState

#: documents the key in /docs; the guard is what checks it
KEY_DOC = Security(
    APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="when the server has a key")
)

QUERY_ROUTING_PARAM = Query(None, description=QUERY_ROUTING_DOC)


class PayloadTooLarge(ClirError):
    status = 413


class ClientGone(ClirError):
    """The client closed the connection before its answer (logged as 499; nobody reads the body)."""

    status = CLIENT_CLOSED


#: seconds a 503 tells the client to wait before it retries (Retry-After): about one batch of work
RETRY_AFTER_S = 1


def add_error_handlers(app: FastAPI) -> None:
    """One JSON shape for every error a route raises."""

    @app.exception_handler(ClirError)
    async def _clir_error(request: Request, exc: ClirError):
        return _error_response(exc.status, str(exc), request)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _error_response(422, _validation_detail(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error_response(exc.status_code, exc.detail, request, headers=getattr(exc, "headers", None))


def add_probe_routes(app: FastAPI, state: ServeState) -> None:
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
        responses=ERRORS,
    )
    async def ready(request: Request):
        if not state.ready:
            return _error_response(503, "indexes are loading", None, error="not_ready")
        if state.api_key is not None and not key_matches(request.headers.get(API_KEY_HEADER), state.api_key):
            return {"status": "ready"}  # an open path: the index names are for key holders
        return {"status": "ready", "indexes": list(state.searchers)}


def add_index_routes(app: FastAPI, state: ServeState) -> None:
    @app.get("/indexes", tags=["indexes"], summary="served indexes", responses=ERRORS)
    async def list_indexes(_key: str | None = KEY_DOC) -> dict[str, Any]:
        return {"indexes": [_describe(name, s, name == state.default) for name, s in state.searchers.items()]}

    @app.get(
        "/indexes/{name}/docs/{doc_id:path}",
        tags=["indexes"],
        summary="a stored document",
        responses=ERRORS,
    )
    async def get_doc(name: str, doc_id: str, _key: str | None = KEY_DOC) -> dict[str, Any]:
        name, searcher = state.get(name)
        if not searcher.docstore.available:
            raise NotFoundError(f"index {name!r} has no document store")
        doc = searcher.docstore.get(doc_id)
        return {"index": name, **doc}


def _describe(name: str, s: Any, default: bool) -> dict[str, Any]:
    """A served index as ``GET /indexes`` lists it, from its manifest."""
    m = s.manifest
    return {
        "name": name,
        "default": default,
        "num_docs": s.num_docs,
        "languages": sorted(k for k in (m.get("doc_langs") or {}) if k != "unknown")
        or ([m["doc_lang"]] if m.get("doc_lang") else []),
        "doc_langs": m.get("doc_langs") or {},
        "collection": m.get("collection"),
        "factory": m.get("factory"),
        "dim": m.get("dim"),
        "model": (m.get("model") or {}).get("source"),
        "encoder_fingerprint": m.get("encoder"),
        # target doc routing: documents whose language had no adapter kept the source one, per language
        "routing_fallback": m.get("routing_fallback") or {},
        "created": m.get("created"),
    }


def add_search_routes(app: FastAPI, state: ServeState) -> None:
    @app.post("/search", tags=["search"], summary="search one index", response_model=SearchResponse,
              response_model_exclude_none=True, responses=ERRORS)  # fmt: skip
    async def search_post(body: SearchRequest, _key: str | None = KEY_DOC):
        return await _search_one(
            state, body.index, body.query, body.k, body.query_lang, body.return_text, body.query_routing
        )

    @app.get("/search", tags=["search"], summary="search one index (query string)", response_model=SearchResponse,
             response_model_exclude_none=True, responses=ERRORS)  # fmt: skip
    async def search_get(
        q: str = Query(description="query text"),
        k: int = Query(10, ge=1, le=MAX_K),
        index: str | None = None,
        query_lang: str | None = Query(None, min_length=1, max_length=32),
        query_routing: QueryRouting | None = QUERY_ROUTING_PARAM,
        return_text: bool = True,
        _key: str | None = KEY_DOC,
    ):
        try:
            nonblank(q)
        except ValueError as e:
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("query", "q"), "msg": str(e)}]
            ) from None
        return await _search_one(
            state, index, q, k, query_lang, return_text, query_routing, where=("query", "query_routing")
        )

    @app.post("/search/batch", tags=["search"], summary="many queries in one call",
              response_model=BatchSearchResponse, response_model_exclude_none=True, responses=ERRORS)  # fmt: skip
    async def search_batch(body: BatchSearchRequest, request: Request, _key: str | None = KEY_DOC):
        return await _search_batch(state, body, request)


def _check_query_routing(
    name: str, searcher: Any, routing: QueryRouting | None, where: tuple[str, ...]
) -> None:
    """A request's query routing needs language adapters to route: an index of a madx model (422 else)."""
    if routing is not None and not searcher.encoder.routes_languages:
        mode = searcher.encoder.config.adapter_mode
        msg = (
            f"index {name!r} has no language adapters to route (adapter mode {mode}): query_routing needs "
            "an index of a madx model; leave it out here"
        )
        raise RequestValidationError([{"type": "value_error", "loc": where, "msg": msg}])


async def _search_one(
    state: ServeState,
    name: str | None,
    query: str,
    k: int,
    lang: str | None,
    return_text: bool,
    routing: QueryRouting | None = None,
    where: tuple[str, ...] = ("body", "query_routing"),
) -> dict[str, Any]:
    t0 = time.perf_counter()
    name, searcher = state.get(name)
    _check_query_routing(name, searcher, routing, where)
    job = Job(searcher, query, k, lang or searcher.encoder.config.source_lang, routing)
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


def _check_batch_limits(body: BatchSearchRequest, max_queries: int, max_chars: int) -> None:
    if len(body.queries) > max_queries:
        raise RequestValidationError(
            [
                {
                    "type": "too_long",
                    "loc": ("body", "queries"),
                    "msg": f"at most {max_queries} queries per call, got {len(body.queries)}",
                }
            ]
        )
    chars = sum(len(q) for q in body.queries)
    if chars > max_chars:
        raise PayloadTooLarge(
            f"the batch holds {chars} query characters, more than max_batch_chars ({max_chars})"
            ": split it into several calls"
        )


async def _search_batch(state: ServeState, body: BatchSearchRequest, request: Request) -> Response:
    settings = state.settings
    _check_batch_limits(body, settings.max_batch_queries, settings.max_batch_chars)
    t0 = time.perf_counter()
    name, searcher = state.get(body.index)
    _check_query_routing(name, searcher, body.query_routing, ("body", "query_routing"))
    lang = body.query_lang or searcher.encoder.config.source_lang  # default: the model's source language
    jobs = [Job(searcher, q, body.k, lang, body.query_routing) for q in body.queries]
    # one slice at a time: between slices the encoder is free for single searches, which wait for one
    # slice, not for the whole batch
    step = settings.max_batch_size
    batcher = state.batchers.get(id(searcher.encoder))
    if batcher is not None:
        work = batcher.run_batch(jobs, step)
    else:
        work = _run_slices(searcher.encoder, jobs, step)
    results = await _unless_client_leaves(work, request)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    found = [r for r in results if isinstance(r, Result)]
    # built and serialised in a thread: for 1,000 queries that took 0.15-1.5 s of the event loop, which
    # every request in flight waited for
    took_ms = round((time.perf_counter() - t0) * 1000, 3)
    payload = await asyncio.to_thread(_batch_json, searcher, name, found, body.return_text, took_ms)
    return Response(payload, media_type="application/json")


def _batch_json(searcher: Any, name: str, found: list[Result], return_text: bool, took_ms: float) -> bytes:
    """The /search/batch response body, as the route's response model would serialise it."""
    items = [
        {"hits": _hits(searcher, r, return_text), "query_tokens": r.tokens, "truncated": r.truncated}
        for r in found
    ]
    out = BatchSearchResponse.model_validate({"index": name, "results": items, "took_ms": took_ms})
    return out.model_dump_json(exclude_none=True).encode()


async def _run_slices(encoder: Encoder, jobs: list[Job], step: int) -> list[Result | BaseException]:
    """:func:`run_jobs` a slice at a time without micro-batching (asyncio's default executor)."""
    out: list[Result | BaseException] = []
    for at in range(0, len(jobs), step):
        out += await asyncio.to_thread(run_jobs, encoder, jobs[at : at + step], batch_size=step)
    return out


async def _unless_client_leaves(work: Coroutine[Any, Any, list[Any]], request: Request) -> list[Any]:
    """The result of ``work``, which is cancelled if the client disconnects first: a batch nobody waits
    for stops after the slice that is running, rather than computing for half a minute."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if task not in done:
        raise ClientGone("the client closed the connection before the batch was done")
    return task.result()


async def _disconnect(request: Request) -> None:
    """Returns when the client goes away (the body is read: what ``receive`` gives next is the
    disconnection)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _hits(searcher: Any, res: Result, return_text: bool) -> list[dict[str, Any]]:
    return [h.as_dict() for h in searcher.hits(res.scores, res.rows, return_text=return_text)]


def _error_response(
    status: int, detail: Any, request: Request | None, *, error: str | None = None, headers=None
) -> JSONResponse:
    rid = request.scope.get("state", {}).get("request_id") if request is not None else None
    body = error_body(status, detail, request_id=rid if status >= 500 else None, error=error)
    if status == 503:  # overloaded, starting or stopping: the client may come back
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_S)}
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
