"""Tests for adaptvid.data.

A package so that this folder's conftest is imported as data.conftest and
does not replace tests/conftest.py, which other test modules import as `conftest`.
"""
