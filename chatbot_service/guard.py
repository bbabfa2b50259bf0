"""Who may call, and whether this request still fits: authentication, then reservation and settlement.
Edge: drives the counters (memory or Redis) and the identity checks that do I/O (OIDC, TokenReview).

The HTTP layer asks ``caller()`` for every protected route (a FastAPI dependency); the turn logic asks
``admit()`` once it knows the prompt's size, just before the upstream call, and the ticket it gets
back is settled with the usage the upstream reports (or released if the call failed). A bot without
``access`` and ``limits`` takes the fast path: no identity, no counters, today's behaviour.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from chatbot_service.counters import Counters, CountersDown, MemoryCounters
from chatbot_service.errors import Forbidden, LimitsUnavailable, Unauthenticated
from chatbot_service.identity import ApiKeys, Identity, bearer, looks_like_jwt
from chatbot_service.limits import Charge, Planner, ratelimit_headers, refusal
from chatbot_service.prices import DEFAULT_TABLE, PriceTable
from chatbot_service.sessions import Stores
from chatbot_service.settings import Settings
from chatbot_service.tokens import get_encoding

if TYPE_CHECKING:
    from chatbot_service.oidc import OidcVerifier
    from chatbot_service.redis_counters import RedisCounters
    from chatbot_service.tokenreview import TokenReviewer

log = logging.getLogger("kubechat.access")
T = TypeVar("T")

ANONYMOUS = Identity("anonymous", "anonymous")


@dataclass
class Caller:
    """One request's caller; ``headers`` are added to its response (``x-ratelimit-*``)."""

    identity: Identity | None
    headers: dict[str, str] = field(default_factory=dict)

    def session_key(self, session_id: str) -> str:
        """Where the session is stored: under its owner, so no other identity can find it."""
        return session_id if self.identity is None else f"{session_id}.{self.identity.tag}"

    @property
    def name(self) -> str:
        return (self.identity or ANONYMOUS).name


#: The caller of turns that come from no request (the terminal bot).
OPEN = Caller(None)


class Ticket:
    """A reservation: settle it once with the real usage, or release it if the call failed."""

    def __init__(
        self,
        counters: Counters | None,
        planner: Planner | None,
        charges: list[Charge],
        prompt_tokens: int,
        encoding: str,
    ) -> None:
        self._counters = counters
        self._planner = planner
        self._charges = charges
        self._prompt_tokens = prompt_tokens
        self._encoding = encoding
        self._open = counters is not None and bool(charges)

    async def guarded(self, call: Awaitable[T]) -> T:
        """Await the upstream call; if it fails, give the reservation back and re-raise."""
        try:
            return await call
        except BaseException:
            await self.release()
            raise

    async def settle(self, usage: Mapping[str, Any] | None, reply: str | None = None) -> None:
        """Charge what was used: the upstream's usage, else the counted reply, else the reservation."""
        if not self._open:
            return
        prompt, completion = self._prompt_tokens, None
        if usage and isinstance(usage.get("completion_tokens"), int):
            prompt = int(usage.get("prompt_tokens") or prompt)
            completion = int(usage["completion_tokens"])
        elif reply is not None:
            completion = len(get_encoding(self._encoding).encode_ordinary(reply))
        if completion is None:
            self._open = False
            return
        await self._adjust(prompt, completion)

    async def settle_raw(self, body: bytes) -> None:
        """Settle from an upstream response body as it came (the OpenAI-compatible pass-through)."""
        if not self._open:
            return
        try:
            usage = json.loads(body).get("usage")
        except (ValueError, AttributeError):
            usage = None
        await self.settle(usage if isinstance(usage, dict) else None)

    async def release(self) -> None:
        """The call failed: nothing was used but the request itself."""
        if self._open:
            await self._adjust(0, 0)

    async def _adjust(self, prompt: int, completion: int) -> None:
        self._open = False
        assert self._counters is not None and self._planner is not None
        adjustments = self._planner.settlement(self._charges, prompt, completion)
        if not adjustments:
            return
        # No I/O for shared counters either: Redis's settlement rides on the next reservation.
        await _settle(self._counters, adjustments)


async def _settle(counters: Counters, adjustments: list[tuple[Charge, int]]) -> None:
    try:
        await counters.settle(adjustments)
    except CountersDown as exc:
        log.warning("could not settle a request's usage: %s", exc)


NOOP = Ticket(None, None, [], 0, "")


@dataclass
class _Policy:
    """What one settings object asks for, built once per settings object."""

    settings: Settings
    keys: ApiKeys | None
    planner: Planner | None
    reply_limit_param: str = "max_tokens"
    encoding: str = ""
    oidc: OidcVerifier | None = None
    reviewer: TokenReviewer | None = None


class Guard:
    def __init__(self, stores: Stores) -> None:
        self._stores = stores
        self._policy: _Policy | None = None
        self.memory = MemoryCounters()
        self._redis: RedisCounters | None = None

    def policy(self, settings: Settings) -> _Policy:
        policy = self._policy
        if policy is not None and policy.settings is settings:
            return policy
        access = settings.access
        keys = ApiKeys(settings.api_keys) if access and access.api_keys else None
        planner = Planner(settings.limits, settings.model) if (access or settings.limits) else None
        info = settings.model_info
        new = _Policy(settings, keys, planner, info.reply_limit_param, info.encoding)
        if policy is not None and policy.settings.access == access:
            new.oidc, new.reviewer = policy.oidc, policy.reviewer  # keep their caches
        if access and access.oidc and new.oidc is None:
            from chatbot_service.oidc import OidcVerifier

            new.oidc = OidcVerifier(access.oidc)
        if access and access.service_accounts and new.reviewer is None:
            from chatbot_service.tokenreview import TokenReviewer

            new.reviewer = TokenReviewer(access.service_accounts)
        before = policy.keys.fingerprints if policy and policy.keys else None
        if keys and keys.fingerprints != before:
            shown = ", ".join(f"{n} ({fp})" for n, fp in sorted(keys.fingerprints.items())) or "none"
            log.info("API keys in force: %s", shown)
        self._policy = new
        return new

    def prices(self, settings: Settings) -> PriceTable:
        """The price table the bot's usage is costed with (the spec's overrides on the defaults)."""
        planner = self.policy(settings).planner
        return planner.prices if planner is not None else DEFAULT_TABLE

    def shared(self, settings: Settings) -> bool:
        """Whether the counters are shared by replicas (Redis) or this pod's own."""
        return settings.session_store == "redis"

    def counters(self, settings: Settings) -> Counters:
        if settings.session_store != "redis":
            return self.memory
        from chatbot_service.redis_counters import RedisCounters

        store = self._stores.redis(settings)
        if self._redis is None or self._redis.store is not store:
            self._redis = RedisCounters(store)
        return self._redis

    async def authenticate(self, settings: Settings | None, authorization: str | None) -> Caller:
        """The caller of a protected route; 401 without a valid credential, 403 if not allowed."""
        if settings is None or settings.access is None:
            return Caller(None)
        credential = bearer(authorization)
        if credential is None:
            raise Unauthenticated()
        policy = self.policy(settings)
        if policy.keys is not None:
            name = policy.keys.match(credential)
            if name is not None:
                return Caller(Identity(name, "api-key"))
        if looks_like_jwt(credential):
            if policy.oidc is not None:
                known = policy.oidc.known(credential)
                if known is not None:
                    return Caller(known)
                if policy.oidc.claims_issuer(credential):
                    return Caller(await policy.oidc.verify(credential))
            if policy.reviewer is not None:
                return Caller(await policy.reviewer.review(credential))
        raise Unauthenticated()

    async def admit(
        self, caller: Caller, settings: Settings, prompt_tokens: int, params: Mapping[str, Any]
    ) -> Ticket:
        """Reserve the prompt plus the reply limit on every counter, or refuse with 429."""
        policy = self.policy(settings)
        if policy.planner is None:
            return NOOP
        now = time.time()
        reply_limit = int(params.get(policy.reply_limit_param) or settings.max_reply_tokens)
        charges = policy.planner.plan(caller.name, prompt_tokens, reply_limit, now)
        counters = self.counters(settings)
        try:
            reservation = await counters.reserve(charges, now, caller.name)
        except CountersDown as exc:
            limits = settings.limits
            if limits is not None and limits.fail_open:
                log.warning("%s: admitting without counting (limits.redisDown: allow)", exc)
                return NOOP
            log.warning("%s: refusing (limits.redisDown: refuse)", exc)
            raise LimitsUnavailable(
                "this bot's limit counters are unavailable, so it refuses requests until they are back; "
                "try again shortly"
            ) from None
        if not reservation.admitted:
            raise refusal(reservation.outcomes, reservation.buckets, now)
        caller.headers.update(
            ratelimit_headers(reservation.outcomes, reservation.buckets, now, admitted=True)
        )
        return Ticket(counters, policy.planner, charges, prompt_tokens, policy.encoding)

    def check_owner(self, settings: Settings, caller: Caller, identity: str | None) -> list[str] | None:
        """Whose usage ``caller`` may read: None for everyone (an owner, or an open bot), or itself."""
        access = settings.access
        if access is None or (caller.identity and caller.identity.name in access.owners):
            return None if identity is None else [identity]
        if identity is not None and identity != caller.name:
            raise Forbidden("only this bot's owners (access.owners) may read another identity's usage")
        return [caller.name]
