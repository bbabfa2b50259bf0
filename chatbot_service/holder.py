"""The settings in force, reloaded in the background. Edge: reads sources, logs.

A bad reload keeps the last good settings (and says so); a process that never had good settings
stays up and reports why on ``/readyz`` instead of crash-looping.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping

from chatbot_service.errors import NotReady
from chatbot_service.policy import counting
from chatbot_service.settings import Settings, SettingsError, parse_settings

log = logging.getLogger("kubechat.settings")

Loader = Callable[[], Mapping[str, str]]


class Pending(SettingsError):
    """A source that is still loading (App Configuration at startup): not ready, but no error yet."""


class SettingsHolder:
    """Owns the current ``Settings``; ``reload()`` re-reads every source and swaps them atomically."""

    def __init__(self, load: Loader, on_reload: Callable[[bool], object] | None = None) -> None:
        self._load = load
        self._on_reload = on_reload or (lambda ok: None)  # True: new settings in force; False: a failure
        self._raw: dict[str, str] | None = None
        self.current: Settings | None = None
        self.problems: list[str] = []
        self._lock = threading.Lock()  # reloads come from the reload loop and from a source that loaded
        self.reloader_restarts = 0
        self.reloader_error: str | None = None  # what last killed the reload loop

    def reload(self) -> bool:
        """Re-read the sources; True if the settings in force changed."""
        with self._lock:
            return self._reload()

    def _reload(self) -> bool:
        try:
            raw = dict(self._load())
        except SettingsError as exc:  # a source that names its problems (App Configuration, Key Vault)
            return self._failed(exc.problems, pending=isinstance(exc, Pending))
        except (OSError, ValueError) as exc:
            return self._failed([f"settings could not be read: {exc}"])
        if raw == self._raw and not self.problems:
            return False
        try:
            settings = parse_settings(raw)
        except SettingsError as exc:
            return self._failed(exc.problems)
        self._raw = raw
        changed = settings != self.current
        if changed:
            log.info(
                "settings loaded: model=%s, provider=%s, tokens counted with %s; ignored keys: %s",
                settings.model,
                settings.provider,
                settings.token_counting,
                ", ".join(settings.ignored_keys) or "none",
            )
        self.current, self.problems = settings, []
        if changed:
            self._on_reload(True)
        return changed

    def _failed(self, problems: list[str], pending: bool = False) -> bool:
        if not pending:
            self._on_reload(False)
        if problems != self.problems:
            kept = "keeping the last good settings" if self.current else "not ready"
            level = logging.INFO if pending else logging.ERROR
            log.log(
                level,
                "%s (%s): %s",
                "settings pending" if pending else "invalid settings",
                kept,
                "; ".join(problems),
            )
        self.problems = problems
        return False

    def loaded(self) -> Settings:
        """The settings in force (enough to read sessions), or ``NotReady`` with the problems."""
        settings = self.current
        if settings is None:
            raise NotReady("the bot's settings are invalid: " + "; ".join(self.problems))
        return settings

    def require(self) -> Settings:
        """The settings a turn can use (a key and every other need present), or ``NotReady`` saying what
        is missing."""
        settings = self.loaded()
        missing = settings.missing()
        if missing:
            raise NotReady("the bot is not configured yet: no " + " and no ".join(missing))
        return settings

    def readiness(self) -> dict[str, object]:
        """What ``/readyz`` reports: never a value, only names and problems."""
        missing = self.current.missing() if self.current else []
        problems = list(self.problems)
        if self.reloader_error:
            problems.append(
                f"the settings reloader failed ({self.reloader_error}) and was restarted "
                f"{self.reloader_restarts} time(s); settings may be stale until a reload succeeds"
            )
        return {
            "ready": self.current is not None and not missing,
            "missing": missing,
            "problems": problems,
            "model": self.current.model if self.current else None,
            "tokens": self.current.token_counting if self.current else None,
            "limits": counting(self.current.limits, self.current.session_store) if self.current else None,
            "reloader": {"restarts": self.reloader_restarts, "last_error": self.reloader_error},
        }

    async def run(self, interval: float) -> None:
        """Reload every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.reload)
            self.reloader_error = None  # a reload went through: whatever killed the loop is over

    async def supervise(self, interval: float) -> None:
        """``run`` forever: a loop that dies (a bug, an SDK error no source turned into a problem) is
        logged once with its traceback, reported on ``/readyz`` and restarted after a pause."""
        while True:
            try:
                await self.run(interval)
            except Exception as exc:
                self.reloader_restarts += 1
                self.reloader_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.error("the settings reloader failed; restarting it", exc_info=exc)
                await asyncio.sleep(min(60.0, interval * self.reloader_restarts))
