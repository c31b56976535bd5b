"""Generative retrieval built on semantic IDs."""

__version__ = "0.1.0"
