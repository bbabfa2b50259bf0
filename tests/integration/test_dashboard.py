"""The Grafana dashboard's queries, run by a real Prometheus that scrapes a real bot after real traffic:
every metric a query names exists under that name, every query parses, and every panel shows data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.integration.conftest import BotFactory
from tests.support.fake_openai import FakeOpenAI, Fault
from tests.support.operator import REPO
from tests.support.servers import ThreadedServer, free_port

DASHBOARD = REPO / "charts" / "kubechat" / "dashboards" / "kubechat-bots.json"
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$namespace": ".*", "$bot": ".*", "$__rate_interval": "1m", "$__range": "5m"}


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


def grafana(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        assert binary, "the dashboard test needs a real Prometheus: apt-get install prometheus"
        config = workdir / "prometheus.yml"
        scrape = {
            "job_name": "bots",
            "scrape_interval": "1s",
            "static_configs": [{"targets": [target], "labels": {"bot": "helpdesk", "namespace": "team-a"}}],
        }
        config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": [scrape]}))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx2.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait(self, expr: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.query(expr):
                    return
            except httpx2.HTTPError:
                pass
            assert self.process.poll() is None, "prometheus exited; see its log"
            assert time.monotonic() < deadline, f"no data for {expr}"
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def trimming_bot(start_bot: BotFactory, bot_env: dict[str, str]) -> Iterator[ThreadedServer]:
    bot_env |= {"KUBECHAT_MAX_CONTEXT_TOKENS": "300", "KUBECHAT_MAX_REPLY_TOKENS": "100"}
    with start_bot(bot_env) as bot:
        yield bot


def test_every_dashboard_query_finds_data_in_a_real_prometheus(
    trimming_bot: ThreadedServer, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    bot = trimming_bot
    prometheus = Prometheus(tmp_path, bot.url.removeprefix("http://"))
    try:
        prometheus.wait('up{job="bots"} == 1')
        with httpx2.Client(base_url=bot.url, timeout=10) as http:
            for _ in range(3):  # traffic across several scrapes, so rate() has points to work with
                sid = None
                for i in range(6):
                    reply = http.post(
                        "/chat", json={"message": f"turn {i}: " + "words " * 10, "session_id": sid}
                    )
                    sid = reply.json()["session_id"]
                streamed = http.post("/chat", json={"message": "a streamed answer please", "stream": True})
                assert "event: done" in streamed.text
                upstream.fail_next(Fault(status=500))
                assert http.post("/chat", json={"message": "this one fails"}).status_code == 502
                assert http.post("/chat", json={}).status_code == 400
                time.sleep(1.5)
        prometheus.wait("kubechat_trimmed_requests_total > 0")
        prometheus.wait('gen_ai_server_time_to_first_token_seconds_count{bot="helpdesk"} >= 3')
        names = set(httpx2.get(prometheus.url + "/api/v1/label/__name__/values", timeout=10).json()["data"])
        empty = []
        for title, expr in dashboard_queries():
            for metric in set(re.findall(r"([a-z_:][a-z0-9_:]*)\{", expr)):
                assert metric in names, f"panel {title!r} queries {metric}, which the bot does not expose"
            if not prometheus.query(grafana(expr)):
                empty.append(title)
        assert not empty, f"panels without data after real traffic: {empty}"
    finally:
        prometheus.stop()
