"""Evaluation and benchmark drivers (not part of the installed ``clir`` package)."""
