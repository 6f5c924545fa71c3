"""deploy/kubernetes: every manifest validates offline against the Kubernetes JSON schemas
(kubernetes-validate ships them), and the security promises hold: a Role on pods in the
models' namespace only, bound to the pool workers' account only; secrets by reference;
one beat; model pods fenced off from Redis and the API."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from pool_manager.settings import load_settings

pytestmark = pytest.mark.timeout(60)
DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.37.0"  # the newest schemas kubernetes-validate 1.37 ships
MODELS = "greenroom-models"


def documents() -> list[dict]:
    return [doc for path in sorted(DEPLOY.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in documents() if doc["kind"] == kind}


def pod_spec(name: str) -> dict:
    workloads = of_kind("Deployment") | of_kind("StatefulSet")
    return workloads[name]["spec"]["template"]["spec"]


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_validates_against_the_kubernetes_schema(doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret():
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml", "secrets.yaml"}
    assert listed == on_disk


def test_only_the_pool_workers_may_touch_pods_and_only_in_the_models_namespace():
    assert not of_kind("ClusterRole") and not of_kind("ClusterRoleBinding")
    (role,) = of_kind("Role").values()
    assert role["metadata"]["namespace"] == MODELS
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"pods", "pods/log"}
    assert all(rule["apiGroups"] == [""] and "*" not in rule["verbs"] for rule in role["rules"])
    (binding,) = of_kind("RoleBinding").values()
    assert binding["metadata"]["namespace"] == MODELS and binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "greenroom-pool", "namespace": "greenroom"}]
    accounts = {name: pod_spec(name).get("serviceAccountName") for name in of_kind("Deployment")}
    assert [name for name, account in accounts.items() if account == "greenroom-pool"] == ["greenroom-pool-worker"]
    for name in accounts:
        if name != "greenroom-pool-worker":
            assert pod_spec(name)["automountServiceAccountToken"] is False, name


def test_secrets_reach_the_programs_by_reference_only():
    for name in of_kind("Deployment") | of_kind("StatefulSet"):
        for variable in pod_spec(name)["containers"][0]["env"]:
            if any(word in variable["name"] for word in ("PASSWORD", "KEYS", "REDIS_URL")):
                assert variable["valueFrom"]["secretKeyRef"]["name"] == "greenroom-secrets", (name, variable)
    redis = pod_spec("redis")["containers"][0]
    assert "requirepass" not in " ".join(redis.get("args", [])) and "$REDIS_PASSWORD" in redis["command"][-1]


def test_exactly_one_beat_never_two_during_an_update():
    beat = of_kind("Deployment")["greenroom-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"] == {"type": "Recreate"}


def test_every_program_runs_hardened():
    for name in of_kind("Deployment") | of_kind("StatefulSet"):
        spec = pod_spec(name)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        context = spec["containers"][0]["securityContext"]
        assert context == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                           "capabilities": {"drop": ["ALL"]}}, name


def test_model_pods_may_open_no_connection_and_only_workers_reach_them():
    policy = of_kind("NetworkPolicy")["model-pods"]
    assert policy["metadata"]["namespace"] == MODELS
    assert policy["spec"]["podSelector"] == {"matchLabels": {"greenroom.managed": "true"}}
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"} and policy["spec"]["egress"] == []
    (source,) = policy["spec"]["ingress"][0]["from"]
    assert source["podSelector"]["matchExpressions"][0]["values"] == ["chat-worker", "pool-worker"]


def test_redis_and_the_api_refuse_the_model_pods():
    redis = of_kind("NetworkPolicy")["redis"]["spec"]
    assert redis["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "greenroom"}}}]
    api = of_kind("NetworkPolicy")["api-and-flower"]["spec"]
    (source,) = api["ingress"][0]["from"]
    assert source["namespaceSelector"]["matchExpressions"][0] == {
        "key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [MODELS]}


def test_the_pool_config_is_a_valid_kubernetes_pool_in_the_roles_namespace(tmp_path, monkeypatch):
    config = tmp_path / "greenroom.toml"
    config.write_text(of_kind("ConfigMap")["greenroom-config"]["data"]["greenroom.toml"])
    monkeypatch.setenv("GREENROOM_CONFIG", str(config))
    env = {v["name"]: v.get("value") for v in pod_spec("greenroom-pool-worker")["containers"][0]["env"]}
    settings = load_settings(kubernetes_namespace=env["GREENROOM_KUBERNETES_NAMESPACE"])
    assert {spec.runtime for spec in settings.pools.values()} == {"kubernetes"}
    assert settings.kubernetes_namespace == MODELS
