"""Test-wide setup: tiktoken reads its encodings from ../shared/tiktoken (no network, as in CI)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from chatbot_service.encodings import seed

pytest_plugins = ["tests.cluster.pytest_plugin", "tests.support.page_fixtures"]

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KUBECHAT_SHARED", REPO.parent / "shared"))
TIKTOKEN_CACHE = Path(tempfile.gettempdir()) / "kubechat-tests-tiktoken"
seed(SHARED / "tiktoken", TIKTOKEN_CACHE)
os.environ["TIKTOKEN_CACHE_DIR"] = str(TIKTOKEN_CACHE)
# The images the cluster tests build carry the encodings: from this local copy (localcluster/encodings.py).
os.environ.setdefault("KUBECHAT_TIKTOKEN_DIR", str(SHARED / "tiktoken"))


@pytest.fixture(scope="session")
def tiktoken_cache() -> Path:
    return TIKTOKEN_CACHE
