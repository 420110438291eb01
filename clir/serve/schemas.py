"""The REST API's request and response bodies (pydantic models, documented at ``/docs``) and its one JSON
error shape ``{"error", "detail", "request_id"?}``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clir.serve.config import MAX_K

ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    422: "invalid_request",
    499: "client_closed_request",
    500: "internal_error",
    503: "unavailable",
}


def error_body(status: int, detail: Any, *, request_id: str | None = None, error: str | None = None) -> dict:
    """The JSON body of every error the server answers, from the guard or from a route."""
    body = {"error": error or ERROR_CODES.get(status, "error"), "detail": detail}
    if request_id:
        body["request_id"] = request_id
    return body


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field ("topk") is an error, not silently ignored


def nonblank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty or whitespace")
    return _unicode(v)


def nonblank_or_none(v: str | None) -> str | None:
    return None if v is None else nonblank(v)


def _unicode(v: str) -> str:
    """The one rule for text (as in clir.data.check_text): a lone surrogate (``"\\ud800"``) is refused."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"invalid Unicode: lone surrogate at character {e.start + 1}") from None
    return v


#: a request's query-side language-adapter routing (madx models): see :data:`QUERY_ROUTING_DOC`
#: a query's language adapter per request (the config's Route also has "random", an experiment control only)
QueryRouting = Literal["source", "target", "none"]
QUERY_ROUTING_DOC = (
    "language adapter under the task adapter for the query, on an index of a madx model (one with language "
    "adapters): `source` (the model's source language's, English), `target` (the adapter of `query_lang`), "
    "`none` (the task adapter alone); default: the model's own query routing. Document routing cannot be "
    "changed per request: it is fixed by the index (`clir index --doc-routing`, in the index's manifest: "
    "`encoder_fingerprint.routing.doc` in GET /indexes). On an index without language adapters: 422"
)


class SearchRequest(_Strict):
    query: str = Field(
        description="query text (longer than the encoder's limit: truncated, and `truncated` says so)"
    )
    k: int = Field(10, ge=1, le=MAX_K, description="hits to return")
    index: str | None = Field(None, description="index name (default: the server's default index)")
    query_lang: str | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="language of the query (adapter routing; default: the index's model's source language)",
    )
    query_routing: QueryRouting | None = Field(None, description=QUERY_ROUTING_DOC)
    return_text: bool = Field(True, description="include each hit's stored text")

    _check_query = field_validator("query")(nonblank)
    _check_lang = field_validator("query_lang")(nonblank_or_none)


class BatchSearchRequest(_Strict):
    queries: list[str] = Field(min_length=1, description="query texts")
    k: int = Field(10, ge=1, le=MAX_K)
    index: str | None = None
    query_lang: str | None = Field(None, min_length=1, max_length=32)
    query_routing: QueryRouting | None = Field(None, description=QUERY_ROUTING_DOC)
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

    _check_lang = field_validator("query_lang")(nonblank_or_none)


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


#: documented on every route in /docs
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 413, 422, 500, 503)
}
