"""Importing a user's callable from ``module:callable`` or ``path/to/file.py:callable``.

``--calib-reader`` and ``--metric`` both name user code this way; a mistake in the spec is a
user error naming the option, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from onnxprune.common.errors import UserError


def import_attribute(spec: str, option: str) -> Any:
    """The object ``spec`` names.

    Args:
        spec: ``package.module:name`` (imported with the current folder on ``sys.path``) or
            ``path/to/file.py:name`` (loaded from that file).
        option: the option the spec came from (``--metric``), for messages.

    Raises:
        UserError: the spec is malformed, the module cannot be imported (its error is quoted),
            or it has no such attribute.
    """
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr or not attr.isidentifier():
        raise UserError(f"bad {option} {spec!r}: expected MODULE:CALLABLE or FILE.py:CALLABLE")
    module = _load_module(module_part, option)
    if not hasattr(module, attr):
        raise UserError(f"{option}: {module_part!r} has no attribute {attr!r}")
    return getattr(module, attr)


def _load_module(name: str, option: str) -> ModuleType:
    if name.endswith(".py") or "/" in name or "\\" in name:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{option}: no such file: {path}")
        module_spec = importlib.util.spec_from_file_location(f"onnxprune_user_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise UserError(f"{option}: cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's module failed; say how
            raise UserError(f"{option}: importing {path} failed: "
                            f"{type(exc).__name__}: {exc}") from None
        return module
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UserError(f"{option}: cannot import {name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed; say how
        raise UserError(f"{option}: importing {name!r} failed: "
                        f"{type(exc).__name__}: {exc}") from None


__all__ = ["import_attribute"]
