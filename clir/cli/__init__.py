"""Argument parsing for every verb; each verb is a few lines over the homes in ``clir``."""
