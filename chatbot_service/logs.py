"""Logging setup shared by the service's entry points: one line per record, to stderr."""

from __future__ import annotations

import logging


def configure(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One "HTTP Request: POST ..." line per upstream call is noise at info level (and costs ~50 us).
    logging.getLogger("httpx2").setLevel(max(logging.WARNING, logging.getLogger().level))
