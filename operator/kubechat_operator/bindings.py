"""TokenReview bindings whose bot this process does not hold, and their deletion once it is gone.

The binding is cluster-scoped, so it has no owner reference and the garbage collector never removes
it: its labels name its bot, and the operator deletes it with the bot, or finds one a bot deleted
while no operator ran left behind. A binding seen for an unknown bot is looked into after a grace (at
start the bindings' listing can come before the bots'), and whether its bot is gone is then asked,
not assumed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubechat_operator.errors import classify
from kubechat_operator.kube import ApiError, Kube
from kubechat_operator.render import BOT_UID_LABEL, tokenreview_binding_name
from kubechat_operator.tracking import BotKey, BotState

logger = logging.getLogger("kubechat_operator")

BINDING = "ClusterRoleBinding"
ORPHAN_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Unbind:
    """A binding whose bot this process does not hold: deleted once that bot is known to be gone."""

    name: str
    uid: str  # the binding's own, a precondition of the delete ("" when not seen)
    bot_uid: str  # the bot its labels name ("" when they do not)
    gone: bool  # the bot's DELETED event was seen: nothing to ask


class Unbound:
    """The bindings of bots not held, by bot key. Not locked: the controller calls every method but
    ``sweep`` with its own lock held, and ``sweep`` (I/O) with it released."""

    def __init__(self) -> None:
        self.entries: dict[BotKey, Unbind] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: BotKey) -> bool:
        return key in self.entries

    def bot_deleted(self, key: BotKey, gone: BotState | None) -> None:
        """The bot's DELETED event: its binding (if it had or was meant to have one) goes too."""
        if gone is not None and (BINDING in gone.present or gone.bot.spec.reviews_tokens):
            name, uid = gone.present.get(BINDING, (tokenreview_binding_name(key[1], key[0]), ""))
            self.entries[key] = Unbind(name, uid, gone.bot.uid, gone=True)

    def seen(
        self, key: BotKey, event: str | None, meta: Mapping[str, Any], labels: Mapping[str, str]
    ) -> bool:
        """A binding event for a bot not held (yet: at start; or no more; or an older incarnation's).
        True if the bot's key should be looked into after ``ORPHAN_GRACE_SECONDS``."""
        uid = str(meta.get("uid") or "")
        known = self.entries.get(key)
        if event == "DELETED":
            if known is not None and known.uid in ("", uid):
                del self.entries[key]
            return False
        if known is None or not known.gone:
            self.entries[key] = Unbind(
                str(meta.get("name")), uid, str(labels.get(BOT_UID_LABEL) or ""), False
            )
            return True
        return False

    def take(self, key: BotKey, state: BotState | None) -> Unbind | None:
        """What a reconcile of ``key`` must sweep: nothing if its bot is held now (its own reconcile
        then decides about the binding, which it learns of here)."""
        entry = self.entries.get(key)
        if entry is not None and state is not None:
            del self.entries[key]
            state.present.setdefault(BINDING, (entry.name, entry.uid))
            return None
        return entry

    def sweep(self, kube: Kube, key: BotKey, entry: Unbind) -> bool:
        """Delete the binding once its bot is known to be gone; True if it was. Raises the classified
        ``OperatorError`` on failure (the reconcile retries)."""
        try:
            if not entry.gone:
                alive = kube.bot_uid(*key)
                if alive is not None and alive == (entry.bot_uid or alive):
                    return False  # its bot exists: its own reconcile will decide, once its event is in
            kube.delete(BINDING, None, entry.name, entry.uid)
        except ApiError as exc:
            raise classify(exc.status) from None
        logger.info("%s/%s: deleted the TokenReview binding %s (the bot is gone)", *key, entry.name)
        return True

    def swept(self, key: BotKey, entry: Unbind) -> None:
        """Forget ``entry`` after its sweep, unless a newer one replaced it meanwhile."""
        if self.entries.get(key) == entry:
            del self.entries[key]
