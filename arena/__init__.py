"""Watermark Arena: DNN watermarks against removal, forgery, piracy and evasion attacks."""

__version__ = "0.1.0"
