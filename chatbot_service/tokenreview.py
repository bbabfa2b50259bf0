"""Kubernetes service-account tokens, checked by the API server's TokenReview. Edge: API calls.

A caller inside the cluster sends a projected token whose audience names the bot; the API server says
whether it is valid for that audience and whose it is (``system:serviceaccount:<ns>:<name>``). The
bot's pods may create TokenReviews and nothing else (the operator's Role). Answers are cached by the
token's digest until the token expires, so a caller costs one review per token, not per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict
from typing import Any

import jwt

from chatbot_service.errors import Forbidden, NotReady, Unauthenticated
from chatbot_service.identity import Identity
from chatbot_service.policy import ServiceAccountAccess

log = logging.getLogger("kubechat.access")

PREFIX = "system:serviceaccount:"
MAX_CACHED = 10_000
REFUSED_FOR = 10.0  # seconds an invalid token stays refused without asking again
MAX_LIFETIME = 3600.0  # a token without exp is asked about again after this


class TokenReviewer:
    def __init__(self, access: ServiceAccountAccess) -> None:
        self.access = access
        self._cache: OrderedDict[bytes, tuple[float, Identity | None]] = OrderedDict()
        self._api: Any = None

    async def review(self, token: str) -> Identity:
        digest = hashlib.sha256(token.encode()).digest()
        now = time.time()
        cached = self._cache.get(digest)
        if cached is None or cached[0] <= now:
            identity = await asyncio.to_thread(self._ask, token)
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

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except config.ConfigException:  # outside a cluster: KUBECONFIG, read now (not at import)
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
                )
            self._api = client.AuthenticationV1Api(client.ApiClient(configuration))
        return self._api

    def _ask(self, token: str) -> Identity | None:
        from kubernetes.client import V1TokenReview, V1TokenReviewSpec
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config import ConfigException

        review = V1TokenReview(spec=V1TokenReviewSpec(token=token, audiences=[self.access.audience]))
        try:
            status = self._client().create_token_review(review).status
        except (ApiException, ConfigException, OSError) as exc:
            log.warning("TokenReview failed: %s", getattr(exc, "reason", None) or exc)
            raise NotReady("this bot cannot check service-account tokens right now; try again") from None
        if not status or not status.authenticated or self.access.audience not in (status.audiences or []):
            return None
        username = status.user.username if status.user else ""
        if not username or not username.startswith(PREFIX):
            return None  # a valid token, but not a service account's
        return Identity(username, "service-account", frozenset(status.user.groups or ()))


def _expiry(token: str) -> float:
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return 0.0
    return float(exp) if isinstance(exp, int | float) else time.time() + MAX_LIFETIME
