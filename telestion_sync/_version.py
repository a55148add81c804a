"""The package version (one place, read by setup.cfg and sent in CONNECT)."""

__version__ = "0.1.0"
