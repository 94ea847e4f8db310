"""Functions named "module:function", imported when first called: how the command line
and the executor keep what a run does not need out of it (a disk boot never loads the
network's modules, `status` never the builder). A PyInstaller hook
(tools/pyinstaller/hook-archiso_hook.py) bundles every module so named."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def function(target: str) -> Callable[..., Any]:
    """The function `target` names ("package.module:function"), its module imported now
    (one already imported costs a dict lookup)."""
    module, _, name = target.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return found
