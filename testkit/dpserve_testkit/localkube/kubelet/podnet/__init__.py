"""Pod networking for the process runtime: this directory goes first on a container process'
``PYTHONPATH``, so Python's ``site`` module imports :mod:`.sitecustomize` at start."""

from pathlib import Path

HOOK_DIR = Path(__file__).resolve().parent
