"""A Pod object standing in for a bot's pod whose process is a real ``kubechat serve`` on loopback.

It carries what the operator's Deployment and a kubelet would give a bot's pod (the bot's labels, a
container port named ``http``, Running and Ready with an IP), so the operator treats it as one. It is
never bound to a node (no scheduler takes ``schedulerName: nobody``), so nothing else writes its status,
and it names the ChatBot as its controller, so no ReplicaSet adopts it.
"""

from __future__ import annotations

from typing import Any

from kubechat_operator import GROUP, VERSION
from kubechat_operator.render import labels
from kubernetes import client


def create_stand_in(
    core: client.CoreV1Api, namespace: str, name: str, bot: str, bot_uid: str, port: int
) -> None:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": labels(bot),
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "ChatBot",
                    "name": bot,
                    "uid": bot_uid,
                    "controller": True,
                }
            ],
        },
        "spec": {
            "schedulerName": "nobody",
            "containers": [
                {
                    "name": "chatbot",
                    "image": "kubechat/chatbot:test",
                    "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                }
            ],
        },
    }
    core.create_namespaced_pod(namespace, body)  # type: ignore[arg-type]  # the client takes dicts
    status = {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}],
    }
    core.patch_namespaced_pod_status(name, namespace, {"status": status})
