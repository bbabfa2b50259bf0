"""One scrape of a ``/metrics`` page over real HTTP, parsed by prometheus-client's own parser."""

from __future__ import annotations

import httpx2

Labels = dict[str, str]


class Scrape:
    def __init__(self, url: str) -> None:
        response = httpx2.get(url, timeout=10)
        assert response.status_code == 200, response.text[:200]
        assert response.headers["content-type"].startswith("text/plain; version=")
        from prometheus_client.parser import text_string_to_metric_families

        self.samples: list[tuple[str, Labels, float]] = [
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` whose labels include ``labels``."""
        return sum(v for n, ls, v in self.samples if n == name and labels.items() <= ls.items())

    def series(self, name: str) -> list[Labels]:
        return [ls for n, ls, _ in self.samples if n == name]


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)
