"""Fixtures of this directory live in install_support.py (a unique module name, as in e2e)."""

from install_support import *  # noqa: F403
