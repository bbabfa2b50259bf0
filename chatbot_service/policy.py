"""Who may talk to the bot (``access``) and how much they may spend (``limits``). Pure: no I/O.

Both arrive as JSON objects shaped like the ChatBot's ``spec.access`` and ``spec.limits`` (the operator
mounts them as the files ``access`` and ``limits``; locally ``KUBECHAT_ACCESS`` / ``KUBECHAT_LIMITS``),
and are parsed here into frozen objects, so a bad field is a settings problem naming the field, and
an unchanged policy compares equal across reloads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chatbot_service.prices import Price, PriceTable, parse_usd

WINDOWS = ("day", "week", "month")


@dataclass(frozen=True)
class ServiceAccountAccess:
    """Projected service-account tokens checked by TokenReview; allowed by namespace or by account."""

    audience: str
    namespaces: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()  # "namespace/name"

    def allows(self, namespace: str, name: str) -> bool:
        return namespace in self.namespaces or f"{namespace}/{name}" in self.names


@dataclass(frozen=True)
class OidcAccess:
    """JWTs from one issuer for one audience; optionally only some groups or roles."""

    issuer: str
    audience: str
    identity_claim: str = "sub"
    groups_claim: str = "groups"
    roles_claim: str = "roles"
    allowed_groups: frozenset[str] = frozenset()
    allowed_roles: frozenset[str] = frozenset()

    def allows(self, groups: frozenset[str], roles: frozenset[str]) -> bool:
        if not self.allowed_groups and not self.allowed_roles:
            return True
        return bool(groups & self.allowed_groups or roles & self.allowed_roles)


@dataclass(frozen=True)
class Access:
    api_keys: bool = False
    service_accounts: ServiceAccountAccess | None = None
    oidc: OidcAccess | None = None
    #: Identities that may read every identity's usage (everyone reads their own).
    owners: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Quota:
    """One set of limits; None means no limit. Budgets are per window (day, week, month)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens: tuple[tuple[str, int], ...] = ()
    cost: tuple[tuple[str, int], ...] = ()  # nano-dollars


@dataclass(frozen=True)
class Limits:
    per_identity: Quota = Quota()
    identities: tuple[tuple[str, Quota], ...] = ()
    bot: Quota = Quota()
    time_zone: str = "UTC"
    rolling: bool = False  # budgets over the last 24 h / 7 d / 30 d instead of calendar windows
    fail_open: bool = False
    prices: tuple[tuple[str, Price], ...] = field(default=(), compare=True)

    def quota_for(self, identity: str) -> Quota:
        return dict(self.identities).get(identity, self.per_identity)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def price_table(self) -> PriceTable:
        return PriceTable(dict(self.prices))

    @property
    def charges_cost(self) -> bool:
        return any(q.cost for q in (self.per_identity, self.bot, *(q for _, q in self.identities)))


class PolicyError(ValueError):
    """A field of access or limits that cannot be used; the message names it."""


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: must be an object")
    return value


def _known(obj: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown field(s) {', '.join(unknown)}")


def _strings(value: Any, where: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}: must be a list of non-empty strings")
    return frozenset(value)


def _text(obj: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"{where}.{key}: must be a non-empty string")
    return value.strip()


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicyError(f"{where}: must be a whole number >= 0")
    return value


def _json(raw: str, key: str) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise PolicyError(f"{key}: must be a JSON object") from None
    return _object(value, key)


def parse_access(raw: str, bot_name: str) -> Access | None:
    """``spec.access`` as JSON; None (an empty object) keeps the bot open, as before access existed."""
    spec = _json(raw, "access")
    if not spec:
        return None
    _known(spec, "access", {"apiKeys", "serviceAccounts", "oidc", "owners"})
    sa: ServiceAccountAccess | None = None
    if spec.get("serviceAccounts") is not None:
        s = _object(spec["serviceAccounts"], "access.serviceAccounts")
        _known(s, "access.serviceAccounts", {"audience", "namespaces", "names"})
        names = _strings(s.get("names"), "access.serviceAccounts.names")
        bad = sorted(n for n in names if n.count("/") != 1)
        if bad:
            raise PolicyError(f"access.serviceAccounts.names: {bad[0]!r} is not namespace/name")
        sa = ServiceAccountAccess(
            _text(s, "audience", "access.serviceAccounts", default=bot_name),
            _strings(s.get("namespaces"), "access.serviceAccounts.namespaces"),
            names,
        )
    oidc: OidcAccess | None = None
    if spec.get("oidc") is not None:
        o = _object(spec["oidc"], "access.oidc")
        fields = {"issuer", "audience", "identityClaim", "groupsClaim", "rolesClaim", "allowedGroups"}
        _known(o, "access.oidc", fields | {"allowedRoles"})
        issuer = _text(o, "issuer", "access.oidc")
        if not issuer.startswith("https://"):
            raise PolicyError("access.oidc.issuer: must be an https:// URL")
        oidc = OidcAccess(
            issuer.rstrip("/"),
            _text(o, "audience", "access.oidc"),
            _text(o, "identityClaim", "access.oidc", default="sub"),
            _text(o, "groupsClaim", "access.oidc", default="groups"),
            _text(o, "rolesClaim", "access.oidc", default="roles"),
            _strings(o.get("allowedGroups"), "access.oidc.allowedGroups"),
            _strings(o.get("allowedRoles"), "access.oidc.allowedRoles"),
        )
    api_keys = spec.get("apiKeys") is not None
    if not (api_keys or sa or oidc):
        raise PolicyError("access: name at least one of apiKeys, serviceAccounts and oidc")
    return Access(api_keys, sa, oidc, _strings(spec.get("owners"), "access.owners"))


def _budgets(value: Any, where: str, parse: Any) -> tuple[tuple[str, int], ...]:
    budgets = _object(value, where)
    _known(budgets, where, set(WINDOWS))
    out = []
    for window in WINDOWS:
        if budgets.get(window) is not None:
            try:
                out.append((window, parse(budgets[window], f"{where}.{window}")))
            except ValueError as exc:
                raise PolicyError(f"{where}.{window}: {exc}") from None
    return tuple(out)


def _usd(value: Any, where: str) -> int:
    return parse_usd(value)


def _tokens(value: Any, where: str) -> int:
    count = _count(value, where)
    assert count is not None
    return count


def _quota(value: Any, where: str) -> Quota:
    q = _object(value, where)
    _known(q, where, {"requestsPerMinute", "tokensPerMinute", "tokens", "cost"})
    return Quota(
        _count(q.get("requestsPerMinute"), f"{where}.requestsPerMinute"),
        _count(q.get("tokensPerMinute"), f"{where}.tokensPerMinute"),
        _budgets(q.get("tokens"), f"{where}.tokens", _tokens),
        _budgets(q.get("cost"), f"{where}.cost", _usd),
    )


def _price(value: Any, where: str) -> Price:
    p = _object(value, where)
    _known(p, where, {"input", "output"})
    try:
        price = Price(Decimal(str(p["input"])), Decimal(str(p["output"])))
    except (KeyError, InvalidOperation):
        raise PolicyError(f"{where}: needs input and output, USD per million tokens") from None
    if not (price.input.is_finite() and price.output.is_finite()) or min(price.input, price.output) < 0:
        raise PolicyError(f"{where}: prices must be 0 or more")
    return price


def parse_limits(raw: str, model: str) -> Limits | None:
    """``spec.limits`` as JSON; None when there are none."""
    spec = _json(raw, "limits")
    if not spec:
        return None
    _known(
        spec,
        "limits",
        {"perIdentity", "identities", "bot", "timeZone", "budgetWindows", "redisDown", "prices"},
    )
    identities = _object(spec.get("identities"), "limits.identities")
    zone = _text(spec, "timeZone", "limits", default="UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise PolicyError(f"limits.timeZone: unknown time zone {zone[:60]!r} (use an IANA name)") from None
    windows = spec.get("budgetWindows", "calendar")
    if windows not in ("calendar", "rolling"):
        raise PolicyError("limits.budgetWindows: must be calendar or rolling")
    redis_down = spec.get("redisDown", "refuse")
    if redis_down not in ("refuse", "allow"):
        raise PolicyError("limits.redisDown: must be refuse (fail closed) or allow (fail open)")
    prices = _object(spec.get("prices"), "limits.prices")
    limits = Limits(
        _quota(spec.get("perIdentity"), "limits.perIdentity"),
        tuple(sorted((name, _quota(q, f"limits.identities.{name}")) for name, q in identities.items())),
        _quota(spec.get("bot"), "limits.bot"),
        zone,
        windows == "rolling",
        redis_down == "allow",
        tuple(sorted((name, _price(p, f"limits.prices.{name}")) for name, p in prices.items())),
    )
    if limits.charges_cost and limits.price_table.price(model) is None:
        raise PolicyError(
            f"limits: cost budgets need a price for model {model!r}; add it under limits.prices"
        )
    return limits


def counting(limits: Limits | None, session_store: str) -> str | None:
    """Where limits are counted and what happens when that fails, for ``/readyz`` and the status."""
    if limits is None:
        return None
    if session_store != "redis":
        return "per pod (memory): each replica counts its own requests"
    down = "admits without counting" if limits.fail_open else "refuses requests"
    return f"shared by replicas (Redis); when Redis is down the bot {down}"
