"""Lazy re-exports: a package's ``__getattr__`` imports a public name's module on first use."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def lazy_attr(package: str, exports: Mapping[str, str], name: str) -> Any:
    """``name`` from the module ``exports[name]``; AttributeError (as Python words it) if unknown.

    Called from a package's module-level ``__getattr__`` so that importing the package stays
    cheap: the defining module is imported only when the name is first looked up.
    """
    module = exports.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
