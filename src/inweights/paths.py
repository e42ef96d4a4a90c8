"""Where inweights keeps its files: `$INWEIGHTS_HOME`, default `~/.inweights`."""

import os
from pathlib import Path


def home() -> Path:
    """The workspace root: memories, cached base models, cached synthetic data."""
    return Path(os.environ.get("INWEIGHTS_HOME") or Path.home() / ".inweights").expanduser()
