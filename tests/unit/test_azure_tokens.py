"""The Entra ID token cache: requests never wait for a refresh while the token in hand is usable, and
one fetch serves every request that has to wait."""

from __future__ import annotations

import asyncio
import threading

import pytest
from azure.core.credentials import AccessTokenInfo

from chatbot_service.azure_tokens import CachedToken, TokenFetchError, refresh_point

SCOPE = "https://cognitiveservices.azure.com/.default"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Credential:
    """Issues token-<n> valid for ``life`` seconds; ``gate`` holds a request until it is set."""

    def __init__(self, clock: Clock, life: int = 3600) -> None:
        self.clock, self.life = clock, life
        self.requests: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def get_token_info(self, *scopes: str) -> AccessTokenInfo:
        self.requests.extend(scopes)
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("AADSTS700213: no matching federated identity record found")
        return AccessTokenInfo(f"token-{len(self.requests)}", int(self.clock.now) + self.life)

    def close(self) -> None:
        pass


def test_the_refresh_point_is_half_life_for_short_tokens_five_minutes_for_long_ones() -> None:
    assert refresh_point(0, 3600, None) == 3300
    assert refresh_point(0, 60, None) == 30
    assert refresh_point(0, 3600, 1800) == 1800  # the server's refresh_in wins


def test_concurrent_first_requests_share_one_fetch() -> None:
    clock = Clock()
    credential = Credential(clock)
    cache = CachedToken(SCOPE, lambda: credential, clock)

    async def main() -> list[str]:
        return list(await asyncio.gather(*(cache.get() for _ in range(20))))

    assert asyncio.run(main()) == ["token-1"] * 20
    assert credential.requests == [SCOPE]


def test_past_the_refresh_point_requests_go_on_with_the_current_token_while_one_refresh_runs() -> None:
    clock = Clock()
    credential = Credential(clock)
    cache = CachedToken(SCOPE, lambda: credential, clock)

    async def main() -> None:
        assert await cache.get() == "token-1"
        clock.now += 3400  # past the refresh point (300 s before expiry), still valid
        credential.gate.clear()  # Entra ID is slow to answer
        tokens = [await cache.get() for _ in range(10)]
        assert tokens == ["token-1"] * 10  # nobody waited for the refresh in flight
        credential.gate.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if await cache.get() == "token-2":
                break
        assert await cache.get() == "token-2"

    asyncio.run(main())
    assert credential.requests == [SCOPE, SCOPE]


def test_a_failed_refresh_keeps_the_valid_token_and_no_token_at_all_is_a_clear_error() -> None:
    clock = Clock()
    credential = Credential(clock)
    cache = CachedToken(SCOPE, lambda: credential, clock)

    async def main() -> None:
        assert await cache.get() == "token-1"
        credential.fail = True
        clock.now += 3400
        assert await cache.get() == "token-1"
        await asyncio.sleep(0.05)  # the background refresh failed
        assert await cache.get() == "token-1"
        clock.now += 300  # expired: now every request needs a new one
        with pytest.raises(TokenFetchError, match=r"cognitiveservices.*AADSTS700213"):
            await cache.get()

    asyncio.run(main())
