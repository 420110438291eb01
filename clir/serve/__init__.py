"""``clir serve``: the REST search endpoint (FastAPI + uvicorn) over one or more index folders."""

from clir.serve.app import create_app
from clir.serve.config import ServeSettings, load_serve_config, parse_index_spec
from clir.serve.state import load_searchers

__all__ = ["ServeSettings", "create_app", "load_searchers", "load_serve_config", "parse_index_spec"]
