"""Writing JSON reports: atomically to a file, or to standard output with ``-``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np


def _default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(data: object) -> str:
    return json.dumps(data, indent=2, default=_default)


def write_json(data: object, path: str | os.PathLike[str]) -> None:
    """Write ``data`` as JSON to ``path`` (``-`` = stdout), never leaving a partial file."""
    text = dumps(data) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        return
    from onnxprune.graph.write import write_bytes_atomic

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(text.encode(), target)
