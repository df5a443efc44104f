"""The package version, importable without torch (``adaptvid --version`` reads only this)."""
__version__ = "0.1.0"
