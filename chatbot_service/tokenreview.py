"""Kubernetes service-account tokens, checked by the API server's TokenReview. Edge: API calls.

A caller inside the cluster sends a projected token whose audience names the bot; the API server says
whether it is valid for that audience and whose it is (``system:serviceaccount:<ns>:<name>``). The
bot's pods may create TokenReviews and nothing else (the operator's Role). Answers are cached by the
token's digest until the token expires, so a caller costs one review per token, not per request.
The call is one POST through ``kubeclient.py`` (httpx2, async): the chat image has no kubernetes client.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict

import jwt

from chatbot_service.errors import Forbidden, NotReady, Unauthenticated
from chatbot_service.identity import Identity
from chatbot_service.kubeclient import ApiServerError, KubeClient
from chatbot_service.policy import ServiceAccountAccess

log = logging.getLogger("kubechat.access")

PREFIX = "system:serviceaccount:"
MAX_CACHED = 10_000
REFUSED_FOR = 10.0  # seconds an invalid token stays refused without asking again
MAX_LIFETIME = 3600.0  # a token without exp is asked about again after this
PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
TOKENREVIEW_ROLE = "kubechat-tokenreview"  # the chart's ClusterRole: create tokenreviews, nothing else


class TokenReviewer:
    def __init__(self, access: ServiceAccountAccess) -> None:
        self.access = access
        self._cache: OrderedDict[bytes, tuple[float, Identity | None]] = OrderedDict()
        self._api = KubeClient()
        self._failing = ""  # the last failure logged

    async def review(self, token: str) -> Identity:
        digest = hashlib.sha256(token.encode()).digest()
        now = time.time()
        cached = self._cache.get(digest)
        if cached is None or cached[0] <= now:
            identity = await self._ask(token)
            until = min(_expiry(token), now + MAX_LIFETIME) if identity else now + REFUSED_FOR
            self._cache[digest] = cached = (until, identity)
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        identity = cached[1]
        if identity is None:
            raise Unauthenticated()
        namespace, _, name = identity.name.removeprefix(PREFIX).partition(":")
        if not self.access.allows(namespace, name):
            raise Forbidden(f"service account {namespace}/{name} is not allowed to use this bot")
        return identity

    async def _ask(self, token: str) -> Identity | None:
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.access.audience]},
        }
        try:
            answer = await self._api.create(PATH, review)
        except ApiServerError as exc:
            self._failed(exc)
            raise NotReady("this bot cannot check service-account tokens right now; try again") from None
        if self._failing:
            log.info("TokenReview works again")
            self._failing = ""
        return identity_from(answer.get("status"), self.access.audience)

    def _failed(self, exc: ApiServerError) -> None:
        """Logged once per cause, not per caller: a missing Role would otherwise log every request."""
        message = str(exc)
        if message == self._failing:
            return
        self._failing = message
        if exc.status == 403:
            log.error(
                "TokenReview refused (403): this bot's service account may not create tokenreviews; the "
                "operator binds it to the ClusterRole %s (the chart's tokenreview.yaml). %s",
                TOKENREVIEW_ROLE,
                message,
            )
        else:
            log.warning("TokenReview failed: %s", message)


def identity_from(status: object, audience: str) -> Identity | None:
    """The service account a TokenReview's status vouches for, for ``audience``; None for anything else."""
    if not isinstance(status, dict) or status.get("authenticated") is not True:
        return None
    if audience not in (status.get("audiences") or []):
        return None
    user = status.get("user")
    username = user.get("username") if isinstance(user, dict) else None
    if not isinstance(username, str) or not username.startswith(PREFIX):
        return None  # a valid token, but not a service account's
    groups = user.get("groups") if isinstance(user, dict) else None
    return Identity(username, "service-account", frozenset(g for g in groups or () if isinstance(g, str)))


def _expiry(token: str) -> float:
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return 0.0
    return float(exp) if isinstance(exp, int | float) else time.time() + MAX_LIFETIME
