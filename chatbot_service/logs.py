"""Logging setup shared by the service's entry points: one line per record, to stderr."""

from __future__ import annotations

import logging


def configure(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    quiet = logging.DEBUG if debug else logging.WARNING
    # One "HTTP Request: POST ..." line per upstream call is noise at info level (and costs ~50 us).
    logging.getLogger("httpx2").setLevel(quiet)
    # The Azure SDKs log every request and response to App Configuration, Key Vault and the token
    # endpoint over several lines each, and every token they acquire: debug only.
    for name in AZURE_CHATTY:
        logging.getLogger(name).setLevel(quiet)


AZURE_CHATTY = ("azure.core.pipeline.policies.http_logging_policy", "azure.identity")
