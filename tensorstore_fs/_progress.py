"""Progress reporting for long conversions: a tqdm bar when asked for and installed, else nothing.

Library functions take ``progress: bool = False``; the ``tsfs`` CLI turns it on. Logging, not
printing, stays the library's only other output.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["progress_bar"]


class _NullBar:
    """Stand-in with tqdm's small API when no bar is shown."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NullBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(enabled: bool, total: int | None, desc: str, unit: str = "rows") -> Any:
    """A context-managed bar with ``update(n)``: tqdm when ``enabled`` and importable, else a no-op.

    Parameters
    ----------
    enabled : bool
        Show a bar (on stderr).
    total : int or None
        Expected number of units, if known.
    desc : str
        Label in front of the bar.
    unit : str
        Unit name shown with the rate.
    """
    if not enabled:
        return _NullBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the dev and all extras
        log.info("tqdm is not installed; no progress bar for %s", desc)
        return _NullBar()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, leave=False)
