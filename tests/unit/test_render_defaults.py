"""The rendered children leave out what the API server would fill in by itself.

Each field sent in a server-side apply is YAML-decoded, merged and recorded in ``managedFields`` on
every apply and carried in every watch event of the child: a field equal to the server's default
costs API-server CPU for nothing. The table below is the API server's defaulting for the fields we
could write (k8s.io/kubernetes pkg/apis/{core,apps}/v1/defaults.go); rendering any of the specs
below must hit none of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubechat_operator.render import OperatorDefaults, pull_policy_default, render

from tests.unit.test_render import bot

# (path with list items as "[]", value the server defaults it to)
SERVER_DEFAULTS: dict[str, object] = {
    "spec.strategy.type": "RollingUpdate",
    "spec.revisionHistoryLimit": 10,
    "spec.progressDeadlineSeconds": 600,
    "spec.template.spec.restartPolicy": "Always",
    "spec.template.spec.dnsPolicy": "ClusterFirst",
    "spec.template.spec.schedulerName": "default-scheduler",
    "spec.template.spec.terminationGracePeriodSeconds": 30,
    "spec.template.spec.containers[].terminationMessagePath": "/dev/termination-log",
    "spec.template.spec.containers[].terminationMessagePolicy": "File",
    "spec.template.spec.containers[].ports[].protocol": "TCP",
    "spec.template.spec.volumes[].projected.defaultMode": 0o644,
    "spec.template.spec.volumes[].secret.defaultMode": 0o644,
    "spec.template.spec.volumes[].configMap.defaultMode": 0o644,
    "spec.template.spec.containers[].env[].valueFrom.fieldRef.apiVersion": "v1",
    "spec.type": "ClusterIP",  # a Service's
    "spec.sessionAffinity": "None",
    "spec.ports[].protocol": "TCP",
}
PROBE_DEFAULTS = {"periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3}
PROBE_DEFAULTS_NESTED = {"httpGet.scheme": "HTTP"}

SPECS: list[dict[str, Any]] = [
    {},
    {"replicas": 3, "sessionStore": {"type": "redis", "redis": {"urlSecretRef": {"name": "r"}}}},
    {"image": "reg/bot", "imagePullPolicy": "IfNotPresent"},
    {"image": "reg/bot:latest", "imagePullPolicy": "Always"},
    {"image": "reg:5000/bot@sha256:" + "0" * 64},
    {"serviceAccountName": "wi", "appConfiguration": {"endpoint": "https://s.azconfig.io", "label": "prd"}},
    {"access": {"apiKeys": {"secretRef": {"name": "keys"}}, "serviceAccounts": {"namespaces": ["a"]}}},
    {"appConfiguration": {"connectionStringSecretRef": {"name": "appconf"}}},
    {"service": {"type": "NodePort", "port": 8080}},
]


def leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for item in node:
            yield from leaves(item, path + "[]")
    else:
        yield path, node


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: ",".join(s) or "plain")
def test_no_child_sends_a_field_the_server_defaults_to_the_same_value(spec: dict[str, Any]) -> None:
    children = render(bot(**spec), OperatorDefaults())
    for child in children.all():
        for path, value in leaves(child):
            assert SERVER_DEFAULTS.get(path, object()) != value, (child["kind"], path, value)
            probe, _, field = path.rpartition("Probe.")
            if probe:
                defaults = PROBE_DEFAULTS | PROBE_DEFAULTS_NESTED
                assert defaults.get(field, object()) != value, (child["kind"], path, value)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: ",".join(s) or "plain")
def test_containers_repeat_nothing_the_pod_sets_and_pull_as_the_server_would(spec: dict[str, Any]) -> None:
    pod = render(bot(**spec), OperatorDefaults()).deployment["spec"]["template"]["spec"]
    for container in pod["containers"]:
        mine = container.get("securityContext") or {}
        for key in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile"):
            assert key not in mine or mine[key] != pod["securityContext"].get(key), key
        wanted = spec.get("imagePullPolicy") or OperatorDefaults().image_pull_policy
        # left out exactly when the server would default it to the wanted policy
        assert container.get("imagePullPolicy", pull_policy_default(container["image"])) == wanted


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("bot", "Always"),
        ("bot:latest", "Always"),
        ("reg:5000/bot", "Always"),
        ("reg:5000/bot:1.2", "IfNotPresent"),
        ("reg/bot@sha256:" + "a" * 64, "IfNotPresent"),
        ("reg/bot:latest@sha256:" + "a" * 64, "Always"),
    ],
)
def test_the_pull_policy_default_follows_the_tag_as_the_api_server_does(image: str, policy: str) -> None:
    assert pull_policy_default(image) == policy
