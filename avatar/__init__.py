"""Talking-portrait library: audio in, animated portrait frames out, causally."""

__version__ = "0.1.0"
