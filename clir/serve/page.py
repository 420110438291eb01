"""The search page of ``clir serve`` (``GET /``): static files shipped in the package (clir/serve/static), no
external assets. The page is a client of the public REST API only; it holds no data, so it is served without
the API key (the page asks for the key and sends it with each API call)."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

#: URL path -> (file under clir/serve/static, media type)
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
}
PAGE_PATHS = frozenset(ASSETS)
# only this server's own script, styles and API: a hit's text can never run as code in the page
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidate, so an upgraded server never runs with a stale script
}


def add_page_routes(app: FastAPI) -> None:
    """Serve the page's files (read once, here) at the paths in :data:`ASSETS`."""
    static = resources.files("clir.serve").joinpath("static")
    for path, (name, media_type) in ASSETS.items():
        app.add_api_route(
            path,
            _responder(static.joinpath(name).read_bytes(), media_type),
            methods=["GET"],
            include_in_schema=False,
        )


def _responder(body: bytes, media_type: str):
    async def asset() -> Response:  # no parameters: FastAPI reads the signature for request fields
        return Response(body, media_type=media_type, headers=HEADERS)

    return asset
