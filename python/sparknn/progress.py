"""Progress bars for the long steps of a job: tqdm on stderr, only for a person watching."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress:
    """Makes bars that are shown only when ``enabled`` and stderr is a terminal.

    Bars never go to stdout (it may be piped) and never to a log file, where
    carriage-return redraws turn into thousands of lines.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty()

    def bar(self, total: int, desc: str, unit: str = "rows") -> tqdm | _Silent:
        if not self.enabled:  # (tqdm is imported only for a bar shown: 0.03 s of a job's start)
            return _Silent()
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                    file=sys.stderr, leave=False)


class _Silent:
    """A bar not shown: counts what it is told, as tqdm's ``n``."""

    def __init__(self):
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc) -> None:
        return None
