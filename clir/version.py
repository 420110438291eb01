"""The package version (pyproject.toml says the same; a test checks they agree)."""

__version__ = "0.1.0"
