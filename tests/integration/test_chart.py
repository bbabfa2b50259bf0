"""The Helm chart: lint, render, server-side dry runs, and the operator run under the chart's own RBAC.

helm is built from its Go module like the control plane (localcluster/go/helm, cached in ~/.cache/kubechat).
The operator runs as a local process, but authenticated as the chart's ServiceAccount (a TokenRequest
token), so every rule the chart grants is exercised and anything it forgot shows up as a 403.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from kubechat_operator.render import BOT_LABEL, METRICS_LABEL, OperatorDefaults
from kubechat_operator.render import render as render_bot
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from localcluster import build
from localcluster.cluster import ClusterInfo
from localcluster.components import free_ports
from tests.cluster.polling import eventually
from tests.integration.test_operator import Bots, bot_manifest
from tests.support.operator import REPO, Operator, install_crds, kubectl

pytestmark = pytest.mark.cluster

CHART = REPO / "charts" / "kubechat"
Manifest = dict[str, Any]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """Run the pinned helm (built on first use) with its config and cache in a temp dir, not in $HOME."""
    binary = build.ensure_built(["helm"])["helm"]
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        **{f"HELM_{kind}_HOME": str(home / kind.lower()) for kind in ("CONFIG", "CACHE", "DATA")},
    }

    def run(*args: str) -> str:
        done = subprocess.run([str(binary), *args], env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {done.stderr}{done.stdout}")
        return done.stdout

    return run


def render(helm: Callable[..., str], release: str, namespace: str, *sets: str) -> list[Manifest]:
    out = helm("template", release, str(CHART), "--namespace", namespace, *(f"--set={s}" for s in sets))
    return [doc for doc in yaml.safe_load_all(out) if doc]


def only(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [d for d in only(docs, kind) if d["metadata"]["name"] == name]
    return found


def container_args(docs: list[Manifest]) -> list[str]:
    (deployment,) = only(docs, "Deployment")
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def rules_by_resource(role: Manifest) -> dict[tuple[str, str], set[str]]:
    """{(apiGroup, resource): verbs} over all rules, so tests compare grants, not the rules' layout."""
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


# What the operator needs and nothing more (docs/install.md says why, rule by rule).
OBJECT_GRANTS = {
    ("kubechat.dev", "chatbots"): {"get", "list", "watch"},
    ("kubechat.dev", "chatbots/status"): {"get", "patch", "update"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
    ("", "serviceaccounts"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "events"): {"create"},
    ("", "secrets"): {"get"},
    ("", "pods"): {"list"},  # with usage.interval (default): the bots' pods' /metrics into status.usage
}
CRDS_GRANT = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}


# ---- the chart's files ---------------------------------------------------------------------------------
def test_the_chart_ships_the_very_crds_of_crds_dir() -> None:
    ours = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    shipped = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert shipped == ours
    for name in ours:  # copies, not symlinks: `helm package` and every checkout keep them as they are
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"charts/kubechat/crds/{name} differs from crds/{name}: copy it again"
        )


def test_the_chart_version_follows_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == package == "0.1.0"


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["watchNamespaces={team-a,team-b}", "replicaCount=2"],
        ["replicaCount=3", "rbac.secretExistenceCheck=false", "logLevel=debug"],
        ["metrics.podMonitor.enabled=true", "metrics.grafanaDashboard.enabled=true"],
    ],
    ids=["defaults", "namespaced-peering", "no-secret-check", "observability"],
)
def test_helm_lint(helm: Callable[..., str], sets: list[str]) -> None:
    out = helm("lint", "--strict", str(CHART), *(f"--set={s}" for s in sets))
    assert "0 chart(s) failed" in out


# ---- what it renders -----------------------------------------------------------------------------------
def test_observability_objects_are_off_by_default_and_target_the_bots_pods(helm: Callable[..., str]) -> None:
    assert not [d for d in render(helm, "kc", "ops") if d["kind"] in ("PodMonitor", "ConfigMap")]
    docs = render(
        helm,
        "kc",
        "ops",
        "metrics.podMonitor.enabled=true",
        "metrics.podMonitor.labels.release=prometheus",
        "metrics.grafanaDashboard.enabled=true",
    )
    monitor = named(docs, "PodMonitor", "kc-kubechat-bots")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # The operator's own PodMonitor selects the operator's pods, on the port its container names.
    own = named(docs, "PodMonitor", "kc-kubechat-operator")
    (deployment,) = only(docs, "Deployment")
    template = deployment["spec"]["template"]
    assert own["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    (own_endpoint,) = own["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    assert own_endpoint["port"] == "metrics" and f"--metrics-address=0.0.0.0:{ports['metrics']}" in (
        container_args(docs)
    )
    # The PodMonitor selects exactly what the operator puts on a bot's pods, on the port it names.
    bot = {"metadata": {"name": "helpdesk", "namespace": "team-a", "uid": "u"}, "spec": {"systemPrompt": "x"}}
    pod = render_bot(bot, OperatorDefaults()).deployment["spec"]["template"]
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= pod["metadata"]["labels"].items()
    # ... but not the pods of a bot with its metrics off (they answer /metrics with 404).
    (unless,) = monitor["spec"]["selector"]["matchExpressions"]
    quiet = {**bot, "spec": {"systemPrompt": "x", "observability": {"metrics": False}}}
    quiet_labels = render_bot(quiet, OperatorDefaults()).deployment["spec"]["template"]["metadata"]["labels"]
    assert unless == {"key": METRICS_LABEL, "operator": "NotIn", "values": ["off"]}
    assert quiet_labels[METRICS_LABEL] == "off" and METRICS_LABEL not in pod["metadata"]["labels"]
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", ())}
    # `bot` comes from the pod label Prometheus exposes as __meta_kubernetes_pod_label_<sanitised name>.
    bot_source = next(r["sourceLabels"][0] for r in endpoint["relabelings"] if r["targetLabel"] == "bot")
    sanitised = "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in BOT_LABEL)
    assert bot_source == sanitised and pod["metadata"]["labels"][BOT_LABEL] == "helpdesk"
    (dashboard,) = only(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (CHART / "dashboards" / "kubechat-bots.json").read_text()
    assert json.loads(dashboard["data"]["kubechat-bots.json"]) == json.loads(shipped)


def test_defaults_render_a_cluster_wide_restricted_operator(helm: Callable[..., str]) -> None:
    docs = render(helm, "kc", "kubechat-system")
    assert sorted(d["kind"] for d in docs) == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "Deployment",
        "ServiceAccount",
    ]
    assert container_args(docs) == [
        "--all-namespaces",
        "--bot-image=kubechat/chatbot:0.1.0",
        "--bot-image-pull-policy=IfNotPresent",
        "--log-level=info",
        "--liveness=http://0.0.0.0:8081/healthz",
        "--usage-interval=60",
        "--metrics-address=0.0.0.0:8082",
    ]
    (deployment,) = only(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "kubechat/operator:0.1.0"
    assert pod["serviceAccountName"] == "kc-kubechat" == only(docs, "ServiceAccount")[0]["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    assert container["resources"]["limits"]["memory"]
    role = named(docs, "ClusterRole", "kc-kubechat")
    assert rules_by_resource(role) == OBJECT_GRANTS | CRDS_GRANT
    binding = named(docs, "ClusterRoleBinding", "kc-kubechat")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kc-kubechat", "namespace": "kubechat-system"}
    ]


def test_bots_pods_may_get_exactly_token_review_and_the_operator_may_bind_only_that(
    helm: Callable[..., str],
) -> None:
    docs = render(helm, "kc", "kubechat-system")
    assert rules_by_resource(named(docs, "ClusterRole", "kubechat-tokenreview")) == {
        ("authentication.k8s.io", "tokenreviews"): {"create"}
    }
    binder = named(docs, "ClusterRole", "kc-kubechat-tokenreview-binder")
    assert rules_by_resource(binder) == {
        ("rbac.authorization.k8s.io", "clusterrolebindings"): {
            "get",
            "list",
            "watch",
            "create",
            "patch",
            "delete",
        },
        ("rbac.authorization.k8s.io", "clusterroles"): {"bind"},
    }
    assert [r.get("resourceNames") for r in binder["rules"]] == [None, ["kubechat-tokenreview"]]
    assert "--no-watch-bindings" not in container_args(docs)
    without = render(helm, "kc", "kubechat-system", "rbac.tokenReview=false")
    assert [d["metadata"]["name"] for d in only(without, "ClusterRole")] == ["kc-kubechat"]
    assert "--no-watch-bindings" in container_args(without)  # it could not list them


def test_namespaced_with_peering_grants_only_in_the_watched_namespaces(helm: Callable[..., str]) -> None:
    docs = render(helm, "kc", "ops", "watchNamespaces={team-a,team-b}", "replicaCount=2")
    args = container_args(docs)
    assert args[:2] == ["--namespace=team-a", "--namespace=team-b"] and "--all-namespaces" not in args
    assert "--peering=kc-kubechat" in args
    roles = only(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    peering_grant = {("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"}}
    for role in roles:
        assert rules_by_resource(role) == OBJECT_GRANTS | peering_grant
    assert sorted(b["metadata"]["namespace"] for b in only(docs, "RoleBinding")) == ["team-a", "team-b"]
    # Kopf lists namespaces and CRDs even when namespaced: that, read-only, is all that is cluster-wide
    cluster_role = named(docs, "ClusterRole", "kc-kubechat-discovery")
    assert rules_by_resource(cluster_role) == CRDS_GRANT | {("", "namespaces"): {"list", "watch"}}
    peerings = only(docs, "KopfPeering")
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings) == [
        ("team-a", "kc-kubechat"),
        ("team-b", "kc-kubechat"),
    ]


def test_values_reach_the_pods(helm: Callable[..., str]) -> None:
    docs = render(
        helm,
        "bots",
        "ops",
        "replicaCount=2",
        "peering.name=one-at-a-time",
        "rbac.secretExistenceCheck=false",
        "image.repository=registry.example/kubechat-operator",
        "image.tag=1.2",  # a number to --set
        "botImage.repository=registry.example/kubechat-chatbot",
        "botImage.pullPolicy=Always",
        "logLevel=warning",
        "podLabels.azure\\.workload\\.identity/use=true",
        "podAnnotations.example\\.com/team=chat",
        "serviceAccount.annotations.azure\\.workload\\.identity/client-id=00000000-0000-0000-0000-000000000000",
        "nodeSelector.kubernetes\\.io/os=linux",
        "tolerations[0].key=dedicated,tolerations[0].operator=Exists",
        "resources.limits.memory=512Mi",
        "usage.interval=0",
    )
    (deployment,) = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    template = deployment["spec"]["template"]
    pod = template["spec"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert template["metadata"]["annotations"] == {"example.com/team": "chat"}
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/kubechat-operator:1.2"
    assert container["resources"]["limits"]["memory"] == "512Mi"
    args = container_args(docs)
    assert "--bot-image=registry.example/kubechat-chatbot:0.1.0" in args
    assert "--bot-image-pull-policy=Always" in args and "--log-level=warning" in args
    assert "--peering=one-at-a-time" in args
    (account,) = only(docs, "ServiceAccount")
    assert account["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": "00000000-0000-0000-0000-000000000000"
    }
    assert not any(a.startswith("--usage-interval") for a in args)
    grants = rules_by_resource(named(docs, "ClusterRole", "bots-kubechat"))
    assert ("", "secrets") not in grants and ("", "pods") not in grants
    assert grants[("kopf.dev", "clusterkopfpeerings")] == {"get", "list", "watch", "patch"}
    (peering,) = only(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "one-at-a-time"


# ---- against the API server ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crds(cluster: ClusterInfo) -> None:
    """The chart's CRDs (what `helm install` would create first), served before anything uses them."""
    install_crds(cluster, CHART / "crds")


def apply(cluster: ClusterInfo, docs: list[Manifest], *flags: str) -> str:
    stream = "".join(f"---\n{json.dumps(d)}\n" for d in docs)
    return kubectl(cluster, "apply", "--server-side", *flags, "-f", "-", stdin=stream).stdout


@pytest.fixture
def other_namespace(kube_api: Any, namespace: str) -> Iterator[str]:
    """A second fresh namespace next to `namespace` (deleted afterwards)."""
    core = client.CoreV1Api(kube_api)
    name = f"{namespace[:52]}-other"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["replicaCount=2"],
        ["watchNamespaces={WATCHED}", "replicaCount=2", "rbac.secretExistenceCheck=false"],
    ],
    ids=["defaults", "peering", "namespaced"],
)
def test_the_rendering_passes_a_server_side_dry_run(
    helm: Callable[..., str],
    cluster: ClusterInfo,
    crds: None,
    namespace: str,
    other_namespace: str,
    sets: list[str],
) -> None:
    release = f"dry-{namespace[-6:]}"
    docs = render(helm, release, namespace, *(s.replace("WATCHED", other_namespace) for s in sets))
    out = apply(cluster, docs, "--dry-run=server")
    assert out.count("(server dry run)") == len(docs), out


def service_account_kubeconfig(cluster: ClusterInfo, namespace: str, account: str, target: Path) -> Path:
    """A kubeconfig like the admin one (same server and CA) whose user is a TokenRequest token."""
    token = kubectl(cluster, "-n", namespace, "create", "token", account, "--duration=1h").stdout.strip()
    admin = json.loads(cluster.kubeconfig.read_text())  # localcluster writes kubeconfigs as JSON
    admin["users"] = [{"name": account, "user": {"token": token}}]
    for context in admin["contexts"]:
        context["context"]["user"] = account
    target.write_text(json.dumps(admin))
    target.chmod(0o600)
    return target


class ChartOperator:
    """The chart's RBAC and ServiceAccount installed for real; the operator run with the Deployment's args."""

    def __init__(self, cluster: ClusterInfo, docs: list[Manifest], workdir: Path) -> None:
        self.cluster = cluster
        installed = [d for d in docs if d["kind"] != "Deployment"]
        # namespaced objects go with the test's namespaces; these would outlive them
        self.cluster_scoped = [d for d in installed if "namespace" not in d["metadata"]]
        apply(cluster, installed)
        (account,) = only(docs, "ServiceAccount")
        meta = account["metadata"]
        self.kubeconfig = service_account_kubeconfig(
            cluster, meta["namespace"], meta["name"], workdir / "sa-kubeconfig"
        )
        # The Deployment's own args; only the liveness port moves off 8081 so parallel runs cannot clash,
        # and no usage collection: kwok's pods have made-up IPs that must never be contacted.
        self.health = f"http://127.0.0.1:{free_ports(1)[0]}/healthz"
        drop = ("--liveness=", "--usage-interval=", "--metrics-address=")  # a fixed port, as for liveness
        args = [a for a in container_args(docs) if not a.startswith(drop)]
        self.process = Operator(
            ClusterInfo(self.kubeconfig, cluster.server),
            workdir / "operator.log",
            *args,
            "--liveness",
            self.health,
        )
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    def __enter__(self) -> ChartOperator:
        self.process.start()
        eventually(lambda: httpx2.get(self.health).raise_for_status(), timeout=30, what="Kopf's /healthz")
        return self

    def __exit__(self, *_: object) -> None:
        self.process.stop()
        self.api.close()
        stream = "".join(f"---\n{json.dumps(d)}\n" for d in self.cluster_scoped)
        kubectl(self.cluster, "delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=stream)

    def refused(self, call: Callable[[], object]) -> None:
        with pytest.raises(ApiException) as refused:
            call()
        assert refused.value.status == 403, refused.value

    def assert_never_forbidden(self) -> None:
        """No 403 in the operator's log, but for writes into namespaces being deleted (not an RBAC matter:
        a cluster-wide operator may still see bots of namespaces other tests just deleted)."""
        refusals = [
            line
            for line in self.process.output().splitlines()
            if ("forbidden" in line.lower() or " 403" in line)
            and "because it is being terminated" not in line
        ]
        assert not refusals, "the operator was refused something:\n" + "\n".join(refusals[:10])


def test_the_operator_does_its_job_with_only_the_charts_cluster_rbac(
    helm: Callable[..., str],
    cluster: ClusterInfo,
    crds: None,
    kube_api: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    docs = render(helm, f"rbac-{namespace[-6:]}", namespace)
    bots = Bots(kube_api, namespace)  # the admin's view
    with ChartOperator(cluster, docs, tmp_path) as operator:
        whoami = kubectl(ClusterInfo(operator.kubeconfig, cluster.server), "auth", "whoami", "-o", "json")
        user = json.loads(whoami.stdout)["status"]["userInfo"]["username"]
        assert (
            user == f"system:serviceaccount:{namespace}:{only(docs, 'ServiceAccount')[0]['metadata']['name']}"
        )
        bots.create(bot_manifest("helpdesk", replicas=2))

        def degraded() -> None:
            condition = bots.condition("helpdesk", "Degraded")
            assert condition["reason"] == "SecretNotFound" and "'openai'" in condition["message"], condition

        eventually(degraded, timeout=30, what="SecretNotFound reported for the missing Secret")
        bots.secret()
        bots.ready("helpdesk", 2)
        assert bots.deployment("helpdesk").spec.template.spec.containers[0].image == "kubechat/chatbot:0.1.0"
        assert bots.core.read_namespaced_service("helpdesk", namespace).spec.ports[0].port == 80
        assert (
            bots.core.read_namespaced_config_map("helpdesk-config", namespace).data["bot_name"] == "helpdesk"
        )
        reasons = {(e.type, e.reason) for e in bots.events("helpdesk")}
        assert ("Warning", "SecretNotFound") in reasons, reasons  # routine applies are no Events

        kubectl(cluster, "-n", namespace, "scale", "chatbot/helpdesk", "--replicas=3")
        bots.ready("helpdesk", 3)
        bots.apps.delete_namespaced_deployment("helpdesk", namespace)  # watched children come back
        eventually(lambda: bots.deployment("helpdesk"), timeout=30, what="the deleted Deployment put back")
        bots.ready("helpdesk", 3)
        assert any(e.reason == "Restored" for e in bots.events("helpdesk"))

        # ... and nothing beyond it, with the very token the operator uses
        core, apps = client.CoreV1Api(operator.api), client.AppsV1Api(operator.api)
        assert core.read_namespaced_secret("openai", namespace).metadata.name == "openai"  # get: granted
        operator.refused(lambda: core.list_namespaced_secret(namespace))
        operator.refused(lambda: core.list_secret_for_all_namespaces())
        operator.refused(lambda: apps.delete_namespaced_deployment("helpdesk", namespace))
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="intruder"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        )
        operator.refused(lambda: core.create_namespaced_pod(namespace, pod))
        operator.refused(lambda: core.delete_namespaced_config_map("helpdesk-config", namespace))
        operator.refused(lambda: core.list_namespace())  # cluster-wide operation needs no namespace list
        operator.assert_never_forbidden()


def test_a_namespaced_operator_with_peering_and_no_secret_check_under_the_charts_roles(
    helm: Callable[..., str],
    cluster: ClusterInfo,
    crds: None,
    kube_api: Any,
    namespace: str,
    other_namespace: str,
    tmp_path: Path,
) -> None:
    # released into `namespace`, watching only `other_namespace`, two replicas (peering), no Secret rights
    docs = render(
        helm,
        f"ns-{namespace[-6:]}",
        namespace,
        f"watchNamespaces={{{other_namespace}}}",
        "replicaCount=2",
        "rbac.secretExistenceCheck=false",
    )
    watched, unwatched = Bots(kube_api, other_namespace), Bots(kube_api, namespace)
    with ChartOperator(cluster, docs, tmp_path) as operator:
        unwatched.secret()
        unwatched.create(bot_manifest("outside"))
        watched.create(bot_manifest("inside"))  # its Secret is missing, and the operator may not look
        # without the Secret rule the check is skipped: the bot gets its children, no SecretNotFound
        eventually(lambda: watched.deployment("inside"), timeout=30, what="the watched bot's Deployment")
        watched.ready("inside", 1)  # kwok pods pass readiness without running anything
        assert watched.condition("inside", "Degraded")["status"] == "False"
        assert not unwatched.apps.list_namespaced_deployment(namespace).items
        assert "status" not in unwatched.get("outside")
        core, apps = client.CoreV1Api(operator.api), client.AppsV1Api(operator.api)
        operator.refused(lambda: core.read_namespaced_secret("anything", other_namespace))
        operator.refused(lambda: apps.list_namespaced_deployment(namespace))
        operator.refused(lambda: apps.list_deployment_for_all_namespaces())
        operator.assert_never_forbidden()


def test_the_packaged_chart_carries_the_crds_and_notes(helm: Callable[..., str], tmp_path: Path) -> None:
    helm("package", str(CHART), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("kubechat-*.tgz")
    with tarfile.open(package) as archive:
        names = set(archive.getnames())
        shipped = archive.extractfile("kubechat/crds/chatbots.kubechat.dev.yaml")
        assert (
            shipped is not None
            and shipped.read() == (REPO / "crds" / "chatbots.kubechat.dev.yaml").read_bytes()
        )
    assert {
        "kubechat/crds/kopf-peering.yaml",
        "kubechat/templates/NOTES.txt",
        "kubechat/values.yaml",
    } <= names
    assert render(helm, "kc", "x") == [
        doc for doc in yaml.safe_load_all(helm("template", "kc", str(package), "--namespace", "x")) if doc
    ]


def test_helm_install_and_uninstall_on_the_cluster(
    helm: Callable[..., str], cluster: ClusterInfo, crds: None, kube_api: Any, namespace: str
) -> None:
    """A real `helm install` (kwok runs the operator's pod as a stand-in), its notes, then uninstall."""
    release, kubeconfig = f"inst-{namespace[-6:]}", f"--kubeconfig={cluster.kubeconfig}"
    out = helm(
        "install", release, str(CHART), "--namespace", namespace, kubeconfig, "--wait", "--timeout=60s"
    )
    assert "STATUS: deployed" in out
    for line in (
        "kubectl create secret generic openai",
        "kubectl port-forward service/helpdesk 8080:80",
        "curl -s localhost:8080/chat",
        "http://localhost:8080/",
    ):
        assert line in out, out
    apps = client.AppsV1Api(kube_api)

    def ready() -> None:
        deployment = apps.read_namespaced_deployment(f"{release}-kubechat", namespace)
        assert deployment.status.ready_replicas == 1, deployment.status

    # Helm's --wait reads the new ReplicaSet's readyReplicas; the Deployment's own status is copied
    # from it by the deployment controller a moment later, so it may still say none are ready.
    eventually(ready, timeout=60, what="the operator's pod Ready")
    rbac = client.RbacAuthorizationV1Api(kube_api)
    assert rbac.read_cluster_role(f"{release}-kubechat").rules
    helm("uninstall", release, "--namespace", namespace, kubeconfig, "--wait")
    with pytest.raises(ApiException) as gone:
        rbac.read_cluster_role(f"{release}-kubechat")
    assert gone.value.status == 404
    # helm never deletes CRDs: the bots (and their workloads) outlive the operator
    extensions = client.ApiextensionsV1Api(kube_api)
    assert extensions.read_custom_resource_definition("chatbots.kubechat.dev").metadata.name
