from __future__ import annotations

from chatbot_service.memory import (
    BASELINE,
    IN_FLIGHT,
    MIN_STORE,
    STORE_SHARE,
    MiB,
    memory_limit,
    store_budget,
)


def test_the_store_gets_a_share_of_what_the_idle_process_and_requests_leave() -> None:
    assert store_budget(256 * MiB) == int((256 * MiB - BASELINE - IN_FLIGHT) * STORE_SHARE)
    assert 50 * MiB < store_budget(256 * MiB) < 70 * MiB
    assert store_budget(1024 * MiB) > 400 * MiB
    assert store_budget(64 * MiB) == MIN_STORE  # a limit below the baseline still keeps a few sessions


def test_the_limit_comes_from_the_downward_api_variable_first() -> None:
    assert memory_limit({"KUBECHAT_MEMORY_LIMIT": str(300 * MiB)}) == 300 * MiB
    assert memory_limit({"KUBECHAT_MEMORY_LIMIT": "0"}) != 0
