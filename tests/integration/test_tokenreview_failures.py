"""When the bot cannot ask the API server about a service-account token (no kubeconfig, one that is not
YAML, one whose user runs an exec plugin, a server refusing connections): every caller gets a 503 in
OpenAI's error shape, never a 500; each cause is logged once, not per request, and no token is logged."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx2
import jwt
import yaml

from tests.support.bot_process import BotProcess
from tests.support.servers import free_port

OWN_TOKEN = "bot-own-token-7c1f9e2a"


def kubeconfig(server: str, user: dict[str, object]) -> str:
    return yaml.safe_dump(
        {
            "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    )


def test_each_cause_is_a_503_logged_once_without_a_token(bot_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    access = {"serviceAccounts": {"audience": "helpdesk", "namespaces": ["team"]}}
    env = bot_env | {"KUBECHAT_ACCESS": json.dumps(access), "KUBECONFIG": str(config)}
    caller = jwt.encode({"sub": "system:serviceaccount:team:caller", "exp": time.time() + 600}, "k" * 32)
    causes = {
        "": f"cannot read the kubeconfig {config}",
        "{{ not yaml": "is not YAML",
        kubeconfig("https://127.0.0.1:1", {"exec": {"command": "aws"}}): "authenticates with 'exec'",
        kubeconfig(f"https://127.0.0.1:{free_port()}", {"token": OWN_TOKEN}): "cannot reach the API server",
    }
    bot = BotProcess(env, tmp_path / "bot.log")
    try:
        bot.wait_up()
        for text in causes:
            if text:
                config.write_text(text)
            for _ in range(2):
                answer = httpx2.post(
                    bot.url + "/v1/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": f"Bearer {caller}"},
                    timeout=30,
                )
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"]["code"] == "not_ready"
    finally:
        bot.stop()
    output = bot.output()
    for said in causes.values():
        assert output.count(said) == 1, output
    assert "Traceback" not in output
    assert OWN_TOKEN not in output and caller not in output
