"""Progress bars for the long steps of a job: tqdm on stderr, only for a person watching."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """Makes bars that are shown only when ``enabled`` and stderr is a terminal.

    Bars never go to stdout (it may be piped) and never to a log file, where
    carriage-return redraws turn into thousands of lines.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty()

    def bar(self, total: int, desc: str, unit: str = "rows") -> tqdm:
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                    file=sys.stderr, disable=not self.enabled, leave=False)
