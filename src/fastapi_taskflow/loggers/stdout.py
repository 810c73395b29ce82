"""StdoutLogger: one line per event on standard output, for containers and local runs."""

from __future__ import annotations

import sys
from typing import TextIO

from .lines import LineObserver


class StdoutLogger(LineObserver):
    """Writes each accepted event as one line (JSON by default) to ``sys.stdout`` or ``stream``.

    The write happens inline on the event loop: a terminal or a container's log pipe is fast,
    and a line-buffered stream keeps lines whole. For slow targets use :class:`FileLogger`.
    """

    def __init__(
        self,
        min_level: str = "info",
        log_lifecycle: bool = False,
        format: str = "json",
        stream: TextIO | None = None,
    ) -> None:
        super().__init__(min_level=min_level, log_lifecycle=log_lifecycle, format=format)
        self._stream = stream

    def write_line(self, line: str) -> None:
        # sys.stdout is looked up per line, not stored, so redirection (pytest's capsys,
        # contextlib.redirect_stdout) made after construction is honoured.
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(line + "\n")
        stream.flush()
