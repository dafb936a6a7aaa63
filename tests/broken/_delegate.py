"""A transaction wrapper that changes some methods and forwards the rest."""

from __future__ import annotations

from typing import Any

__all__ = ["Delegate"]


class Delegate:
    """Forwards everything it does not define to the wrapped transaction, ``_inner``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
