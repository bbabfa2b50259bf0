"""A Microsoft Entra ID access token for one scope, kept fresh for every request. Edge: the credential
does network I/O (in a thread: azure-identity's sync credential, the one App Configuration uses).

Requests take the token in hand as long as it has more than a small margin left, and never wait for a
refresh: from the refresh point on (the token's ``refresh_on``, else half its life or five minutes
before expiry, whichever comes later) the first request starts one refresh in the background and goes
on with the current token. Only when there is no usable token at all (the first request, or after a
long outage) do requests wait, all of them for the same fetch. A failed background refresh keeps the
current token and is retried a few seconds later; azure-identity itself answers from its cache for
30 s after each request it made, so a refresh may bring the same token back, and is then retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from azure.core.credentials import AccessTokenInfo

log = logging.getLogger("kubechat.upstream")

#: Seconds between refresh attempts while the current token is still usable.
RETRY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    issued: float
    expires_on: float
    refresh_on: float

    @property
    def margin(self) -> float:
        """How close to expiry the token stops being sent (it must still be valid when it arrives)."""
        return min(5.0, max(0.0, self.expires_on - self.issued) / 5)


class TokenFetchError(Exception):
    """No token could be had; the message is safe to show (never a token or an assertion)."""


class Credential(Protocol):
    def get_token_info(self, *scopes: str) -> AccessTokenInfo: ...

    def close(self) -> None: ...


def _default_credential() -> Credential:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def refresh_point(issued: float, expires_on: float, refresh_on: float | None) -> float:
    """When to start getting the next token. Pure."""
    if refresh_on is not None and issued < refresh_on < expires_on:
        return refresh_on
    life = max(0.0, expires_on - issued)
    return expires_on - min(300.0, life / 2)


class CachedToken:
    def __init__(
        self,
        scope: str,
        credential: Callable[[], Credential] = _default_credential,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scope = scope
        self._make_credential = credential
        self._credential: Credential | None = None
        self._clock = clock
        self._token: Token | None = None
        self._next_try = 0.0
        self._fetch: asyncio.Task[Token] | None = None
        self.fetches = 0

    async def get(self) -> str:
        """A token valid for at least the margin; raises ``TokenFetchError`` when none can be had."""
        now = self._clock()
        token = self._token
        if token is not None and token.expires_on - now > token.margin:
            if now >= token.refresh_on and now >= self._next_try and self._fetch is None:
                self._next_try = now + RETRY_SECONDS
                self._start_fetch()
            return token.value
        fetch = self._fetch or self._start_fetch()
        return (await asyncio.shield(fetch)).value

    def _start_fetch(self) -> asyncio.Task[Token]:
        task = asyncio.get_running_loop().create_task(self._refresh())
        # A background refresh nobody awaits: its failure is logged in _refresh, not left unretrieved.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._fetch = task
        return task

    async def _refresh(self) -> Token:
        try:
            token = await asyncio.to_thread(self._request)
        except Exception as exc:
            why = _describe(exc)
            if self._token is not None and self._token.expires_on > self._clock():
                log.warning("refreshing the Entra ID token failed (%s); keeping the current one", why)
            raise TokenFetchError(f"no Microsoft Entra ID token for {self.scope}: {why}") from None
        finally:
            self._fetch = None
        if self._token is None or token.value != self._token.value:
            self._next_try = 0.0
        self._token = token
        return token

    def _request(self) -> Token:
        if self._credential is None:
            self._credential = self._make_credential()
        token = self._ask()
        if token.expires_on - self._clock() <= token.margin:
            # azure-identity answered from its cache (it asks Entra ID at most every 30 s while a token
            # is valid): wait the old token out rather than send one that may expire on its way.
            time.sleep(max(0.0, token.expires_on - self._clock()) + 0.05)
            token = self._ask()
        return token

    def _ask(self) -> Token:
        assert self._credential is not None
        issued = self._clock()
        info = self._credential.get_token_info(self.scope)
        value, expires_on, refresh_on = info.token, float(info.expires_on), info.refresh_on
        if self._token is not None and self._token.value == value:
            return self._token  # the same token again, from the credential's cache
        self.fetches += 1
        point = refresh_point(issued, expires_on, float(refresh_on) if refresh_on else None)
        return Token(str(value), issued, expires_on, point)

    def close(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
        if self._credential is not None:
            self._credential.close()
            self._credential = None


def _describe(exc: Exception) -> str:
    """One line about a failed token request. azure-identity puts the cause (Entra ID's AADSTS error)
    on the lines after the first, so its whole message is kept, on one line; it holds no token."""
    from azure.core.exceptions import ClientAuthenticationError

    from chatbot_service.azure_errors import describe

    if isinstance(exc, ClientAuthenticationError):
        text = " ".join(str(exc.message or exc).split())
        return text if len(text) <= 600 else text[:597] + "..."
    return describe(exc)
