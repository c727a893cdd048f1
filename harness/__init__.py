"""harness: an experiment-tracking competition harness for deepfake detection. Importing it imports nothing
heavy, so the CLI starts fast; subpackages with light and heavy modules export through `lazy_exports`.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

__version__ = "0.1.0"


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A package's `__getattr__` (PEP 562): public name -> the module it is imported from on first use."""
    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return __getattr__
