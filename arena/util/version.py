"""The arena's version, recorded in every result and artifact."""

__version__ = "0.1.0"
