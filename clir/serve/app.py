"""The FastAPI app behind ``clir serve``: search any loaded index with the encoder from its manifest.

Routes: the search page at ``/`` (clir.serve.page), ``/health``, ``/ready``, ``/indexes``, ``POST|GET /search``,
``POST /search/batch``, ``/indexes/{name}/docs/{doc_id}``, OpenAPI at ``/docs``. Every error is JSON ``{"error", "detail"}``; client
errors are 4xx, an internal failure is a 500 carrying a request id that is also in the log.

Here the app is assembled; the parts live beside it: ``state`` (indexes, encoders, batchers), ``routes``,
``schemas`` (request and response bodies), ``guard`` (request id, API key, body limit, access log)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from clir.serve.config import ServeSettings
from clir.serve.guard import DOCS_ASSETS, Guard
from clir.serve.page import add_page_routes
from clir.serve.routes import add_error_handlers, add_index_routes, add_probe_routes, add_search_routes
from clir.serve.state import ServeState, freeze_startup_objects, load_searchers

log = logging.getLogger(__name__)


def create_app(indexes: Mapping[str, Any], settings: ServeSettings | None = None) -> FastAPI:
    """The REST app over ``indexes`` (name -> index folder or ``Searcher``). Indexes load here, once."""
    settings = settings or ServeSettings()
    settings.validate()
    api_key = settings.api_key()  # before loading models: an unset key variable fails at once
    state = ServeState(load_searchers(indexes, device=settings.device), settings, api_key)

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
        await state.stop()

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
    add_error_handlers(app)
    add_probe_routes(app, state)
    add_index_routes(app, state)
    add_search_routes(app, state)
    add_page_routes(app)
    app.add_middleware(Guard, api_key=api_key, settings=settings)
    return app


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


def _version() -> str:
    from clir.version import __version__

    return __version__


def app_from_env() -> Any:
    """Factory for ``uvicorn --factory`` (used by ``clir serve --processes N``): indexes and settings come as
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
    from clir.serve.protocol import configure

    settings = from_dict(ServeSettings, data["settings"])
    configure(settings)  # this process's connection limits (uvicorn imported the class by name)
    app = create_app({n: str(Path(p)) for n, p in data["indexes"].items()}, settings)
    freeze_startup_objects()
    return app
