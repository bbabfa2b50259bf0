"""The local control plane behaves like a real cluster where the operator depends on it: CRDs are served,
Deployments get Ready pods (on kwok nodes), owners garbage-collect their children and RBAC denies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

from localcluster.cluster import ClusterInfo
from tests.cluster.polling import eventually

pytestmark = pytest.mark.cluster

CRD_FILE = Path(__file__).resolve().parents[1] / "cluster" / "testdata" / "widgets-crd.yaml"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"


def _api_status(call: Any, *args: Any, **kwargs: Any) -> int:
    """HTTP status of a call: 200 on success, the error status otherwise."""
    try:
        call(*args, **kwargs)
    except ApiException as err:
        return int(err.status)
    return 200


def _condition(obj: Any, kind: str) -> str | None:
    for condition in obj.status.conditions or []:
        if condition.type == kind:
            return str(condition.status)
    return None


def _delete_crd_if_present(ext: client.ApiextensionsV1Api, name: str) -> None:
    """A reused cluster (KUBECHAT_KUBECONFIG) may still have it from an earlier run."""
    if _api_status(ext.delete_custom_resource_definition, name) == 404:
        return

    def gone() -> None:
        assert _api_status(ext.read_custom_resource_definition, name) == 404, f"CRD {name} still exists"

    eventually(gone, timeout=60, what=f"old CRD {name} deleted")


def test_crd_from_file_becomes_established(kube_api: Any, namespace: str) -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    name = crd["metadata"]["name"]
    group, version, plural = (
        crd["spec"]["group"],
        crd["spec"]["versions"][0]["name"],
        crd["spec"]["names"]["plural"],
    )
    ext = client.ApiextensionsV1Api(kube_api)
    _delete_crd_if_present(ext, name)
    utils.create_from_yaml(kube_api, str(CRD_FILE))  # type: ignore[no-untyped-call]
    try:

        def established() -> None:
            current: Any = ext.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in current.status.conditions or []}
            assert conditions.get("Established") == "True", f"conditions: {conditions}"
            assert conditions.get("NamesAccepted") == "True", f"conditions: {conditions}"

        eventually(established, timeout=30, what=f"CRD {name} Established")

        custom = client.CustomObjectsApi(kube_api)
        widget = {
            "apiVersion": f"{group}/{version}",
            "kind": "Widget",
            "metadata": {"name": "w1"},
            "spec": {"size": 3},
        }
        # Discovery of the new type can lag Established by a moment: retry the create, not the assertion.
        eventually(
            lambda: custom.create_namespaced_custom_object(group, version, namespace, plural, widget),
            timeout=15,
            what="create a Widget",
        )
        stored: Any = custom.get_namespaced_custom_object(group, version, namespace, plural, "w1")
        assert stored["spec"] == {"size": 3}

        bad = {**widget, "metadata": {"name": "w2"}, "spec": {"size": "big"}}
        status = _api_status(custom.create_namespaced_custom_object, group, version, namespace, plural, bad)
        assert status == 422, f"the CRD schema should reject size='big' with 422, got {status}"
    finally:
        ext.delete_custom_resource_definition(name)


def _deployment(name: str, replicas: int) -> client.V1Deployment:
    labels = {"app": name}
    container = client.V1Container(name="main", image="registry.invalid/kubechat/never-pulled:1")
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[container]),
            ),
        ),
    )


def _ready_deployment(kube_api: Any, namespace: str, name: str, replicas: int) -> Any:
    apps = client.AppsV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, _deployment(name, replicas))

    def ready() -> Any:
        dep: Any = apps.read_namespaced_deployment(name, namespace)
        status = dep.status
        conditions = [(c.type, c.status, c.reason) for c in status.conditions or []]
        assert status.ready_replicas == replicas, (
            f"readyReplicas={status.ready_replicas} replicas={status.replicas} "
            f"updated={status.updated_replicas} conditions={conditions}"
        )
        return dep

    return eventually(ready, timeout=60, what=f"Deployment {name} ready")


def _name(obj: Any) -> str:
    return str(obj.metadata.name)


def _owned_by(obj: Any, uid: str) -> bool:
    return any(ref.uid == uid for ref in obj.metadata.owner_references or [])


def test_deployment_pods_become_ready_on_kwok_nodes(kube_api: Any, namespace: str) -> None:
    dep = _ready_deployment(kube_api, namespace, "web", replicas=3)
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)

    replica_sets: list[Any] = [
        rs for rs in apps.list_namespaced_replica_set(namespace).items if _owned_by(rs, dep.metadata.uid)
    ]
    assert len(replica_sets) == 1, (
        f"ReplicaSets owned by the Deployment: {[rs.metadata.name for rs in replica_sets]}"
    )
    assert replica_sets[0].status.ready_replicas == 3

    pods: list[Any] = [
        p for p in core.list_namespaced_pod(namespace).items if _owned_by(p, replica_sets[0].metadata.uid)
    ]
    observed = [(p.metadata.name, p.status.phase, _condition(p, "Ready"), p.spec.node_name) for p in pods]
    assert len(pods) == 3, f"pods: {observed}"
    assert all(phase == "Running" and ready == "True" for _, phase, ready, _ in observed), f"pods: {observed}"
    for node_name in {p.spec.node_name for p in pods}:
        node: Any = core.read_node(node_name)
        assert (node.metadata.annotations or {}).get(KWOK_ANNOTATION) == "fake", (
            f"{node_name} is not a kwok node"
        )


def test_deleting_deployment_garbage_collects_replicasets_and_pods(kube_api: Any, namespace: str) -> None:
    _ready_deployment(kube_api, namespace, "doomed", replicas=2)
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    apps.delete_namespaced_deployment("doomed", namespace, propagation_policy="Background")

    def children_gone() -> None:
        replica_sets = [_name(rs) for rs in apps.list_namespaced_replica_set(namespace).items]
        pods = [_name(p) for p in core.list_namespaced_pod(namespace).items]
        assert not replica_sets and not pods, f"still present: replicasets={replica_sets} pods={pods}"

    eventually(children_gone, timeout=60, what="ReplicaSets and Pods garbage-collected")


def test_deleting_owner_configmap_garbage_collects_dependent(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    owner: Any = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    child_meta = client.V1ObjectMeta(name="child", owner_references=[ref])
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=child_meta, data={"k": "v"}))
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def child_gone() -> None:
        names = [_name(cm) for cm in core.list_namespaced_config_map(namespace).items]
        assert "child" not in names, f"configmaps in namespace: {names}"

    eventually(child_gone, timeout=60, what="dependent ConfigMap garbage-collected")


def _client_with_token(cluster: ClusterInfo, kube_api: Any, token: str) -> client.ApiClient:
    """A client that authenticates only with a bearer token (no admin client certificate)."""
    configuration = client.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = kube_api.configuration.ssl_ca_cert  # verify against the cluster's CA
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(configuration)


def test_rbac_denies_what_a_role_does_not_grant(cluster: ClusterInfo, kube_api: Any, namespace: str) -> None:
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rule = client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])
    rbac.create_namespaced_role(
        namespace, client.V1Role(metadata=client.V1ObjectMeta(name="cm-reader"), rules=[rule])
    )
    binding = client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="cm-reader"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="cm-reader"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
    )
    rbac.create_namespaced_role_binding(namespace, binding)
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    token_request: Any = core.create_namespaced_service_account_token("reader", namespace, request)
    token = token_request.status.token

    with _client_with_token(cluster, kube_api, token) as sa_api:
        as_reader = client.CoreV1Api(sa_api)

        def can_list_configmaps() -> None:
            status = _api_status(as_reader.list_namespaced_config_map, namespace)
            assert status == 200, f"list configmaps as the service account: HTTP {status}"

        # The RBAC authorizer learns of the new RoleBinding through a watch: allow it a moment.
        eventually(can_list_configmaps, timeout=30, what="Role grants list configmaps")
        secrets = _api_status(as_reader.list_namespaced_secret, namespace)
        assert secrets == 403, f"list secrets should be forbidden (403), got HTTP {secrets}"
        other = _api_status(as_reader.list_namespaced_config_map, "kube-system")
        assert other == 403, f"list configmaps in kube-system should be forbidden (403), got HTTP {other}"
        create = _api_status(
            as_reader.create_namespaced_config_map,
            namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x")),
        )
        assert create == 403, f"create configmaps is not granted and should be 403, got HTTP {create}"
