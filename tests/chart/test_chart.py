"""Static tests of charts/mesh, k8s/, skaffold.yaml and the Dockerfile.

Everything runs offline through the Helm library (helm-python-sdk: Helm's Go
SDK behind a C ABI, no helm binary) and kubernetes-validate (the Kubernetes
OpenAPI schemas). No cluster, no Docker engine.

CRDs (ServiceMonitor, HTTPRoute) are not in kubernetes-validate's schemas:
their shape is checked by hand in `check_crd`, only for the fields the chart
sets.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import helm_python
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mesh"
RELEASE = "mesh"
NAMESPACE = "retail"  # not the release name, so a hard-coded namespace would show

MODULES = {  # the binary's contract: name -> (port, dependencies); edge calls everyone
    "auth": (50051, []),
    "user": (50052, ["auth"]),
    "product": (50053, ["auth"]),
    "inventory": (50054, ["auth"]),
    "order": (50055, ["auth", "product", "inventory", "campaign", "payment"]),
    "payment": (50056, ["auth"]),
    "shop": (50057, ["auth"]),
    "notification": (50058, ["auth", "user"]),
    "campaign": (50059, ["auth", "product"]),
    "report": (50060, ["auth"]),
    "iot-gateway": (50061, ["auth", "shop"]),
    "vm": (50062, ["auth", "shop", "iot-gateway", "inventory", "payment"]),
}
MODULES["edge"] = (8080, sorted(MODULES))

K8S_VERSIONS = sorted(
    {"1.29.0", kubernetes_validate.utils.latest_version()},
    key=lambda v: tuple(int(x) for x in v.split(".")),
)
CRD_API_VERSIONS = {"monitoring.coreos.com/v1", "gateway.networking.k8s.io/v1", "cert-manager.io/v1"}


def profile(name: str) -> dict:
    return yaml.safe_load((CHART / f"values-{name}.yaml").read_text())


# Variants rendered and validated: the defaults, the three profiles, and one
# with every optional feature switched on.
VARIANTS: dict[str, dict] = {
    "default": {},
    "kind": profile("kind"),
    "eks": profile("eks"),
    "gke": profile("gke"),
    "everything": {
        "serviceNaming": "prefixed",
        "discovery": "endpoints",
        "config": {"otlpEndpoint": "http://otel-collector.observability:4317"},
        "postgresql": {"enabled": False},
        "redis": {"enabled": False},
        "secrets": {
            "databaseUrl": "postgres://mesh:pw@db.example:5432/mesh",
            "redisUrl": "redis://cache.example:6379",
        },
        "metrics": {"serviceMonitor": {"enabled": True}, "dashboard": {"enabled": True},
                    "alerts": {"enabled": True}},
        "networkPolicy": {"monitoring": {"enabled": True}},
        "edge": {
            "ingress": {"enabled": True, "className": "nginx"},
            "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw", "namespace": "infra"}]},
        },
        "services": {
            name: {"hpa": {"enabled": True, "min": 2, "max": 4, "cpu": 80},
                   "pdb": {"enabled": True, "minAvailable": 1}}
            for name in ("order", "edge", "auth")
        },
    },
}
# Notification's outbound channels: a relay with AUTH and a private CA, a signed webhook.
VARIANTS["everything"]["notification"] = {
    "smtp": {"url": "smtp://mail.example:587", "user": "mesh", "passwordSecret": "smtp-password",
             "caSecret": "relay-ca"},
    "webhook": {"url": "https://hooks.example/mesh", "secretName": "webhook-key"},
}
# mTLS (docs/security.md): certificates from a cert-manager issuer, or your own Secrets.
VARIANTS["mtls"] = {
    "tls": {"enabled": True, "certManager": {"issuerRef": {"name": "mesh-ca", "kind": "ClusterIssuer"}}},
}
VARIANTS["mtls-own-secrets"] = {
    "serviceNaming": "prefixed",
    "tls": {"enabled": True, "secretPrefix": "workload-", "reload": "10s"},
}
# A per-service pool size (rendered into order's env; external database, so no guard).
VARIANTS["everything"]["services"]["order"]["databasePoolSize"] = 8


@pytest.fixture(scope="session")
def chart():
    with helm_python.Chart.load(CHART) as c:
        yield c


_CHART = None


def _chart():
    global _CHART
    if _CHART is None:
        _CHART = helm_python.Chart.load(CHART)
    return _CHART


def _key(values: dict, namespace: str) -> str:
    return json.dumps([values, namespace], sort_keys=True)


@functools.lru_cache(maxsize=None)
def _render(key: str) -> tuple[list[dict], str, dict]:
    values, namespace = json.loads(key)
    out = _chart().render(values=values, name=RELEASE, namespace=namespace, is_install=True)
    objs = [
        doc
        for path, text in sorted(out.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    notes = next((t for p, t in out.items() if p.endswith("NOTES.txt")), "")
    merged = _chart().merge_values(values)
    return objs, notes, merged


def render(values: dict | None = None, namespace: str = NAMESPACE):
    """(objects, NOTES.txt, merged values) for the given overrides."""
    return _render(_key(values or {}, namespace))


def by_kind(objs, kind):
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def component(obj_or_labels) -> str | None:
    labels = obj_or_labels.get("metadata", {}).get("labels", obj_or_labels) if "metadata" in obj_or_labels else obj_or_labels
    return labels.get("app.kubernetes.io/component")


def deployments_by_module(objs):
    return {component(d): d for d in by_kind(objs, "Deployment").values()}


def enabled(merged):
    return {n: s for n, s in merged["services"].items() if s["enabled"]}


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def service_for(objs, pod_labels) -> dict:
    matches = [s for s in by_kind(objs, "Service").values() if selects(s["spec"]["selector"], pod_labels)]
    assert len(matches) == 1, f"expected one Service for {pod_labels}, got {[m['metadata']['name'] for m in matches]}"
    return matches[0]


def env_of(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


# --------------------------------------------------------------------- lint, schemas


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_strict(variant):
    for kube in ("v1.29.0", "v" + K8S_VERSIONS[-1]):
        report = helm_python.lint(CHART, values=VARIANTS[variant], strict=True, kube_version=kube,
                                  namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, f"{variant} @ {kube}: {problems}"


def check_crd(obj):
    """Minimal shape check for the CRD objects kubernetes-validate cannot know."""
    spec = obj["spec"]
    if obj["kind"] == "ServiceMonitor":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
        assert spec["selector"]["matchLabels"] and spec["endpoints"]
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "path", "interval", "scheme", "scrapeTimeout"}
            assert ep["port"] == "admin" and ep["path"] == "/metrics"
            assert re.fullmatch(r"\d+(s|m)", ep["interval"])
    elif obj["kind"] == "PrometheusRule":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(spec) == {"groups"} and spec["groups"]
        for group in spec["groups"]:
            assert set(group) <= {"name", "interval", "rules"} and group["rules"]
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
                assert isinstance(rule["expr"], str) and ("alert" in rule) != ("record" in rule)
    elif obj["kind"] == "Certificate":
        assert obj["apiVersion"] == "cert-manager.io/v1"
        assert set(spec) <= {"secretName", "duration", "renewBefore", "commonName", "dnsNames",
                             "usages", "privateKey", "issuerRef"}
        assert spec["secretName"] and spec["dnsNames"] and spec["issuerRef"]["name"]
        assert set(spec["issuerRef"]) <= {"name", "kind", "group"}
        assert re.fullmatch(r"(\d+[hms])+", spec["duration"]) and re.fullmatch(r"(\d+[hms])+", spec["renewBefore"])
        assert {"server auth", "client auth"} <= set(spec["usages"])
    elif obj["kind"] == "HTTPRoute":
        assert obj["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert set(spec) <= {"parentRefs", "hostnames", "rules"}
        assert spec["parentRefs"] and all("name" in p for p in spec["parentRefs"])
        for rule in spec["rules"]:
            for ref in rule["backendRefs"]:
                assert set(ref) <= {"name", "port", "weight", "kind", "group", "namespace"}
                assert isinstance(ref["port"], int)
    else:
        raise AssertionError(f"unexpected CRD kind {obj['kind']}")


_validated: set[str] = set()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_objects_validate_against_kubernetes_schemas(variant):
    objs, _, _ = render(VARIANTS[variant])
    assert objs
    for obj in objs:
        assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]
        if obj["apiVersion"] in CRD_API_VERSIONS:
            check_crd(obj)
            continue
        key = json.dumps(obj, sort_keys=True)
        if key in _validated:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{variant}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {err}")
        _validated.add(key)


def test_kubernetes_versions_cover_1_29_and_newest():
    assert K8S_VERSIONS[0] == "1.29.0"
    assert len(K8S_VERSIONS) == 2 and K8S_VERSIONS[-1] != "1.29.0"


# --------------------------------------------------------------------- workloads


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_enabled_service_has_deployment_service_probes_security(variant):
    objs, _, merged = render(VARIANTS[variant])
    deps = deployments_by_module(objs)
    assert set(deps) == set(enabled(merged)) == set(MODULES)
    for name, svc in enabled(merged).items():
        d = deps[name]
        pod = d["spec"]["template"]["spec"]
        [c] = pod["containers"]
        assert c["command"] == ["/usr/local/bin/mesh"] and c["args"] == ["serve", name]
        assert svc["port"] == MODULES[name][0]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if merged["tls"]["enabled"] and name != "edge":
                # The service port wants a client certificate: probes use the admin port.
                path = "/readyz" if probe == "readinessProbe" else "/healthz"
                assert c[probe]["httpGet"] == {"path": path, "port": "admin"}, (name, probe)
            else:
                assert c[probe]["grpc"] == {"port": svc["port"]}, (name, probe)
        assert c["resources"]["requests"] and c["resources"]["limits"]
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        env = env_of(c)
        cm = by_kind(objs, "ConfigMap")[c["envFrom"][0]["configMapRef"]["name"]]["data"]
        assert cm["MESH_HOST"] == "0.0.0.0" and cm["MESH_LOG_FORMAT"] == "json"
        assert env[f"MESH_{name.upper().replace('-', '_')}_PORT"]["value"] == str(svc["port"])
        assert pod["serviceAccountName"] in by_kind(objs, "ServiceAccount")
        # Service
        service = service_for(objs, d["spec"]["template"]["metadata"]["labels"])
        assert service["spec"]["ports"][0]["port"] == svc["port"]
        if svc["headless"]:
            assert service["spec"].get("clusterIP") == "None"
        else:
            assert "clusterIP" not in service["spec"]
        # HPA owns replicas when enabled
        hpa = {component(h): h for h in by_kind(objs, "HorizontalPodAutoscaler").values()}
        pdb = {component(p): p for p in by_kind(objs, "PodDisruptionBudget").values()}
        assert (name in hpa) == svc["hpa"]["enabled"]
        assert (name in pdb) == svc["pdb"]["enabled"]
        if svc["hpa"]["enabled"]:
            assert "replicas" not in d["spec"]
            assert hpa[name]["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]
        else:
            assert d["spec"]["replicas"] == svc["replicas"]


def test_service_types_default_headless_grpc_clusterip_edge():
    objs, _, _ = render()
    services = by_kind(objs, "Service")
    for name in MODULES:
        spec = services[name]["spec"]
        if name == "edge":
            assert spec["type"] == "ClusterIP" and "clusterIP" not in spec
        else:
            assert spec["clusterIP"] == "None"


def test_every_container_in_release_is_locked_down():
    for variant in VARIANTS:
        objs, _, _ = render(VARIANTS[variant])
        for o in objs:
            if o["kind"] not in ("Deployment", "StatefulSet", "Job"):
                continue
            pod = o["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
                assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsUser"] != 0


def test_shutdown_grace_below_termination_grace():
    for variant in VARIANTS:
        objs, _, merged = render(VARIANTS[variant])
        grace = merged["config"]["shutdownGrace"]
        seconds = int(grace[:-1]) if grace.endswith("s") and not grace.endswith("ms") else None
        assert seconds is not None
        for d in by_kind(objs, "Deployment").values():
            assert seconds < d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


# --------------------------------------------------------------------- addressing


@pytest.mark.parametrize("naming", ["short", "prefixed"])
@pytest.mark.parametrize("namespace", ["mesh", "shop-prod"])
def test_addr_env_points_at_rendered_service_dns(naming, namespace):
    objs, _, merged = render({"serviceNaming": naming}, namespace=namespace)
    deps = deployments_by_module(objs)
    services = enabled(merged)
    for name, svc in services.items():
        env = env_of(deps[name]["spec"]["template"]["spec"]["containers"][0])
        addrs = {k for k in env if k.endswith("_ADDR")}
        expected_keys = {f"MESH_{d.upper().replace('-', '_')}_ADDR" for d in svc["dependencies"]}
        assert addrs == expected_keys, name
        assert sorted(svc["dependencies"]) == sorted(MODULES[name][1]), name
        for dep in svc["dependencies"]:
            target = service_for(objs, deps[dep]["spec"]["template"]["metadata"]["labels"])
            host = f"{target['metadata']['name']}.{namespace}.svc.cluster.local"
            port = target["spec"]["ports"][0]["port"]
            assert port == services[dep]["port"]
            assert env[f"MESH_{dep.upper().replace('-', '_')}_ADDR"]["value"] == f"http://{host}:{port}"
    if naming == "short":
        assert "product" in by_kind(objs, "Service")  # the design's <service>.<ns>.svc DNS names


def test_data_store_wiring():
    objs, _, merged = render()  # bundled Postgres + Redis
    deps = deployments_by_module(objs)
    pg_host = f"postgresql.{NAMESPACE}.svc.cluster.local"
    assert "postgresql" in by_kind(objs, "Service") and "postgresql" in by_kind(objs, "StatefulSet")
    for name, svc in enabled(merged).items():
        env = env_of(deps[name]["spec"]["template"]["spec"]["containers"][0])
        if svc["postgres"]:
            names = list(env)
            assert names.index("POSTGRES_PASSWORD") < names.index("MESH_DATABASE_URL")
            assert pg_host in env["MESH_DATABASE_URL"]["value"]
            assert "$(POSTGRES_PASSWORD)" in env["MESH_DATABASE_URL"]["value"]
        else:
            assert "MESH_DATABASE_URL" not in env
        assert ("MESH_REDIS_URL" in env) == svc["redis"]
    # External stores from an existing Secret (the cloud profiles).
    objs, _, _ = render(VARIANTS["eks"])
    assert not by_kind(objs, "Secret") and not by_kind(objs, "StatefulSet")
    for name, d in deployments_by_module(objs).items():
        env = env_of(d["spec"]["template"]["spec"]["containers"][0])
        if name != "edge":
            assert env["MESH_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "mesh-secrets"
            assert env["MESH_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "mesh-secrets"


def test_auth_gets_jwt_key_file():
    for variant in ("default", "eks"):
        objs, _, merged = render(VARIANTS[variant])
        d = deployments_by_module(objs)["auth"]
        pod = d["spec"]["template"]["spec"]
        env = env_of(pod["containers"][0])
        path = env["MESH_JWT_PRIVATE_KEY_FILE"]["value"]
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "jwt")
        assert path.startswith(mount["mountPath"] + "/") and mount["readOnly"]
        vol = next(v for v in pod["volumes"] if v["name"] == "jwt")
        expected = merged["secrets"]["existingSecret"] or RELEASE
        assert vol["secret"]["secretName"] == expected
        for other, dd in deployments_by_module(objs).items():
            if other != "auth":
                assert "MESH_JWT_PRIVATE_KEY_FILE" not in env_of(dd["spec"]["template"]["spec"]["containers"][0])
    objs, _, _ = render()
    secret = by_kind(objs, "Secret")[RELEASE]
    assert set(secret["data"]) == {"jwt-private-key.pem", "page-token-key", "postgres-password"}


def test_every_service_gets_the_one_page_token_key_from_the_secret():
    for variant in ("default", "eks"):
        objs, _, merged = render(VARIANTS[variant])
        expected = {"name": merged["secrets"]["existingSecret"] or RELEASE, "key": "page-token-key"}
        deps = deployments_by_module(objs)
        assert set(deps) == set(enabled(merged))
        for name, d in deps.items():
            env = env_of(d["spec"]["template"]["spec"]["containers"][0])
            assert env["MESH_PAGE_TOKEN_KEY"]["valueFrom"]["secretKeyRef"] == expected, name
    # Generated once per release: 48 random characters (a new install gets another key).
    keys = set()
    for namespace in (NAMESPACE, "other"):
        objs, _, _ = render(None, namespace)
        key = base64.b64decode(by_kind(objs, "Secret")[RELEASE]["data"]["page-token-key"]).decode()
        assert len(key) == 48 and key.isalnum(), key
        keys.add(key)
    assert len(keys) == 2, "two installs share a page-token key"
    given = "a-page-token-key-chosen-by-the-operator-0123"
    objs, _, _ = render({"secrets": {"pageTokenKey": given}})
    assert base64.b64decode(by_kind(objs, "Secret")[RELEASE]["data"]["page-token-key"]).decode() == given


@pytest.mark.parametrize("bad", ["short", " " + "k" * 40, "k" * 40 + "\n", "k" * 1025])
def test_values_schema_rejects_bad_page_token_keys(bad):
    with pytest.raises(helm_python.HelmValuesError):
        render({"secrets": {"pageTokenKey": bad}})


# --------------------------------------------------------------------- network policies


def peer_modules(peers, release_selector):
    """Module names selected by podSelector peers of this release (others ignored)."""
    mods = set()
    for p in peers or []:
        labels = (p.get("podSelector") or {}).get("matchLabels") or {}
        if "namespaceSelector" not in p and selects(release_selector, labels) and component(labels):
            mods.add(component(labels))
    return mods


def policy_edges(objs, modules):
    """(caller, callee, port) allowed by the rendered ingress and egress rules between modules."""
    policies = by_kind(objs, "NetworkPolicy")
    deny = [p for p in policies.values() if not p["spec"].get("ingress") and not p["spec"].get("egress")
            and "app.kubernetes.io/component" not in p["spec"]["podSelector"]["matchLabels"]]
    assert len(deny) == 1, "one default-deny policy"
    release_selector = deny[0]["spec"]["podSelector"]["matchLabels"]
    assert set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress, egress = set(), set()
    for pol in policies.values():
        me = component(pol["spec"]["podSelector"]["matchLabels"])
        if me not in modules:
            continue
        for rule in pol["spec"].get("ingress") or []:
            ports = {p["port"] for p in rule["ports"]}
            for caller in peer_modules(rule.get("from"), release_selector):
                ingress |= {(caller, me, port) for port in ports}
        for rule in pol["spec"].get("egress") or []:
            ports = {p["port"] for p in rule.get("ports", [])}
            for callee in peer_modules(rule.get("to"), release_selector):
                if callee in modules:
                    egress |= {(me, callee, port) for port in ports}
    return ingress, egress, release_selector


def expected_edges(merged):
    svcs = enabled(merged)
    return {
        (caller, dep, svcs[dep]["port"])
        for caller, s in svcs.items()
        for dep in s["dependencies"]
        if dep in svcs
    }


DISABLE_CASES = {
    "all": [],
    "no-campaign": ["campaign"],
    "no-shop-vm": ["shop", "vm"],
    "no-edge": ["edge"],
}


@pytest.mark.parametrize("case", sorted(DISABLE_CASES))
@pytest.mark.parametrize("variant", ["default", "everything"])
def test_network_policies_allow_exactly_declared_calls(case, variant):
    values = copy.deepcopy(VARIANTS[variant])
    for name in DISABLE_CASES[case]:
        values.setdefault("services", {}).setdefault(name, {})["enabled"] = False
    if "edge" in DISABLE_CASES[case]:
        values.setdefault("edge", {}).update({"ingress": {"enabled": False}, "httpRoute": {"enabled": False}})
    objs, _, merged = render(values)
    modules = set(enabled(merged))
    ingress, egress, release_selector = policy_edges(objs, modules)
    expected = expected_edges(merged)
    assert ingress == expected
    assert egress == expected
    # Every pod of the release is under the default-deny and has its own policy.
    policies = by_kind(objs, "NetworkPolicy").values()
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            labels = o["spec"]["template"]["metadata"]["labels"]
            assert selects(release_selector, labels)
            own = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], labels)
                   and component(p["spec"]["podSelector"]["matchLabels"])]
            assert len(own) == 1, o["metadata"]["name"]
    # Open ingress (no `from`) exists only on the edge's port; ingress from other namespaces only to 9090.
    for pol in policies:
        me = component(pol["spec"]["podSelector"]["matchLabels"])
        for rule in pol["spec"].get("ingress") or []:
            ports = {p["port"] for p in rule["ports"]}
            if "from" not in rule:
                assert me == "edge" and ports == {8080}
            elif any("namespaceSelector" in p for p in rule["from"]):
                assert ports == {9090}
        # Egress outside the release: DNS, data stores, OTLP, API server only.
        notification = merged["notification"]
        outbound = notification["smtp"]["url"] or notification["webhook"]["secretName"]
        for rule in pol["spec"].get("egress") or []:
            ports = {p["port"] for p in rule.get("ports", [])}
            if peer_modules(rule.get("to"), release_selector):
                continue
            if me == "notification" and outbound and ports == set(notification["egress"]["ports"]):
                continue  # its relay and webhook receivers
            assert ports and ports <= {53, 5432, 6379, 4317, 443, 6443}, (me, rule)
            if 4317 in ports:
                assert merged["config"]["otlpEndpoint"]
            if ports & {443, 6443}:
                assert merged["discovery"] == "endpoints"
            if 5432 in ports:
                assert me == "migrate" or merged["services"][me]["postgres"]
    # Disabled modules leave nothing behind.
    for name in DISABLE_CASES[case]:
        for o in objs:
            if o["kind"] in ("Deployment", "Service", "NetworkPolicy", "HorizontalPodAutoscaler",
                             "PodDisruptionBudget"):
                assert component(o) != name, (o["kind"], o["metadata"]["name"])
        text = json.dumps([p["spec"] for p in policies])
        assert f'"app.kubernetes.io/component": "{name}"' not in text
        for d in by_kind(objs, "Deployment").values():
            env = env_of(d["spec"]["template"]["spec"]["containers"][0])
            assert f"MESH_{name.upper().replace('-', '_')}_ADDR" not in env


def notification_pod(objs):
    pod = deployments_by_module(objs)["notification"]["spec"]["template"]["spec"]
    return pod, env_of(pod["containers"][0])


def notification_egress(objs):
    pol = next(p for p in by_kind(objs, "NetworkPolicy").values()
               if component(p["spec"]["podSelector"]["matchLabels"]) == "notification")
    return [r for r in pol["spec"]["egress"] if {p["port"] for p in r["ports"]} == {443, 465, 587}]


def test_notification_outbound_channels_use_mounted_secrets():
    objs, _, _ = render(VARIANTS["everything"])
    pod, env = notification_pod(objs)
    assert env["MESH_NOTIFICATION_SMTP_URL"]["value"] == "smtp://mail.example:587"
    assert env["MESH_NOTIFICATION_SMTP_TLS"]["value"] == "starttls"
    assert env["MESH_NOTIFICATION_SMTP_USER"]["value"] == "mesh"
    assert env["MESH_NOTIFICATION_WEBHOOK_URL"]["value"] == "https://hooks.example/mesh"
    assert "MESH_NOTIFICATION_WEBHOOK_ALLOW_HTTP" not in env
    assert not [v for v in env if v.endswith(("_PASSWORD", "_SECRET"))], "secrets are files, never env values"
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for var, secret, key in [
        ("MESH_NOTIFICATION_SMTP_PASSWORD_FILE", "smtp-password", "password"),
        ("MESH_NOTIFICATION_SMTP_CA_FILE", "relay-ca", "ca.crt"),
        ("MESH_NOTIFICATION_WEBHOOK_SECRET_FILE", "webhook-key", "webhook-secret"),
    ]:
        path = env[var]["value"]
        [(name, mount)] = [(n, m) for n, m in mounts.items() if path.startswith(m["mountPath"] + "/")]
        assert mount["readOnly"]
        assert path == f"{mount['mountPath']}/{key}"
        assert volumes[name]["secret"]["secretName"] == secret
        assert volumes[name]["secret"]["items"] == [{"key": key, "path": key}]
    assert len(notification_egress(objs)) == 1, "the relay and receivers are reachable"
    for name, d in deployments_by_module(objs).items():
        if name != "notification":
            other = env_of(d["spec"]["template"]["spec"]["containers"][0])
            assert not [v for v in other if v.startswith("MESH_NOTIFICATION_") and v != "MESH_NOTIFICATION_ADDR"], name
    # Defaults: nothing sent beyond the log, nothing mounted, no egress.
    objs, _, _ = render()
    pod, env = notification_pod(objs)
    assert [v for v in env if v.startswith("MESH_NOTIFICATION_")] == ["MESH_NOTIFICATION_PORT"]
    assert not [v for v in pod["volumes"] if v["name"].startswith("notification-")]
    assert not notification_egress(objs)
    # Local development: plain http webhooks said out loud.
    objs, _, _ = render({"notification": {"webhook": {"secretName": "k", "allowHttp": True}}})
    assert notification_pod(objs)[1]["MESH_NOTIFICATION_WEBHOOK_ALLOW_HTTP"]["value"] == "true"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"smtp": {"url": "smtp://m.example", "tls": "none", "user": "u", "passwordSecret": "p"}},
         "only sent over TLS"),
        ({"smtp": {"url": "smtp://m.example", "user": "u"}}, "passwordSecret"),
        ({"webhook": {"url": "https://h.example/x"}}, "secretName"),
    ],
)
def test_notification_refuses_unsafe_combinations(values, message):
    with pytest.raises(Exception, match=message):
        render({"notification": values})


@pytest.mark.parametrize(
    "values",
    [
        {"smtp": {"tls": "maybe"}},
        {"smtp": {"url": "mail.example:25"}},
        {"webhook": {"url": "ftp://h.example"}},
        {"webhook": {"allowHttp": "yes"}},
        {"egress": {"ports": [0]}},
    ],
)
def test_values_schema_rejects_bad_notification_settings(values):
    with pytest.raises(helm_python.HelmValuesError):
        render({"notification": values})


def test_data_store_policies_admit_only_their_clients():
    objs, _, merged = render()
    policies = {component(p["spec"]["podSelector"]["matchLabels"]): p for p in by_kind(objs, "NetworkPolicy").values()}
    for store, flag, port in (("postgresql", "postgres", 5432), ("redis", "redis", 6379)):
        [rule] = policies[store]["spec"]["ingress"]
        clients = {component(p["podSelector"]["matchLabels"]) for p in rule["from"]}
        expected = {n for n, s in enabled(merged).items() if s[flag]} | ({"migrate"} if store == "postgresql" else set())
        assert clients == expected and [p["port"] for p in rule["ports"]] == [port]
        assert "edge" not in clients


# --------------------------------------------------------------------- image, values schema


def test_image_defaults_to_app_version_never_latest(chart):
    objs, _, _ = render()
    app_version = chart.metadata["appVersion"]
    assert chart.metadata["version"] == app_version == "0.1.0"
    for variant in VARIANTS:
        objs, _, _ = render(VARIANTS[variant])
        for o in objs:
            if o["kind"] in ("Deployment", "StatefulSet", "Job"):
                for c in o["spec"]["template"]["spec"]["containers"]:
                    repo, _, tag = c["image"].rpartition(":")
                    assert repo and tag and tag != "latest", c["image"]
                    if c["name"] in ("mesh", "migrate"):
                        assert tag == app_version
    with pytest.raises(helm_python.HelmValuesError):
        render({"image": {"tag": "latest"}})


@pytest.mark.parametrize(
    "typo",
    [
        {"services": {"order": {"replcias": 3}}},
        {"services": {"ordr": {"enabled": True}}},
        {"services": {"order": {"hpa": {"enabeld": True}}}},
        {"services": {"order": {"dependencies": ["prodcut"]}}},
        {"edge": {"ingres": {"enabled": True}}},
        {"networkPolicy": {"enable": False}},
        {"discovery": "consul"},
        {"imagee": {}},
        # auth signs with Ed25519 only and refuses other keys at start; the schema says so first.
        {"secrets": {"jwtKeyType": "rsa"}},
    ],
)
def test_values_schema_rejects_typos(typo):
    with pytest.raises(helm_python.HelmValuesError):
        render(typo)


def test_values_schema_is_strict_everywhere():
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, path
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(schema, "")


# --------------------------------------------------------------------- features


def test_migration_job_is_a_hook():
    for variant, hook in (("default", "post-install,pre-upgrade"), ("eks", "pre-install,pre-upgrade"),
                          ("everything", "pre-install,pre-upgrade")):
        objs, _, merged = render(VARIANTS[variant])
        [job] = by_kind(objs, "Job").values()
        assert job["metadata"]["annotations"]["helm.sh/hook"] == hook
        pod = job["spec"]["template"]["spec"]
        assert pod["containers"][0]["args"] == ["migrate", "all"]
        # Its ServiceAccount (and any Secret it reads) exist before it: hooks with a lower weight.
        sa = by_kind(objs, "ServiceAccount")[pod["serviceAccountName"]]
        assert sa["metadata"]["annotations"]["helm.sh/hook"] == hook
        assert int(sa["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
            job["metadata"]["annotations"]["helm.sh/hook-weight"])
        env = env_of(pod["containers"][0])
        ref = env["MESH_DATABASE_URL"].get("valueFrom", {}).get("secretKeyRef")
        if hook.startswith("pre-install") and ref:
            secret = ref["name"]
            if not merged["secrets"]["existingSecret"]:
                assert by_kind(objs, "Secret")[secret]["metadata"]["annotations"]["helm.sh/hook"] == hook


def test_discovery_endpoints_renders_rbac():
    objs, _, _ = render()
    assert not by_kind(objs, "Role") and not by_kind(objs, "RoleBinding")
    assert by_kind(objs, "ConfigMap")[RELEASE]["data"]["MESH_DISCOVERY"] == "dns"
    objs, _, _ = render({"discovery": "endpoints"})
    [role] = by_kind(objs, "Role").values()
    assert role["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["get", "list", "watch"]}]
    [binding] = by_kind(objs, "RoleBinding").values()
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == RELEASE
    assert by_kind(objs, "ConfigMap")[RELEASE]["data"]["MESH_DISCOVERY"] == "endpoints"
    for d in by_kind(objs, "Deployment").values():
        assert d["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


def test_profiles():
    kind, _, _ = render(VARIANTS["kind"])
    assert by_kind(kind, "Service")["edge"]["spec"]["type"] == "NodePort"
    assert {s["metadata"]["name"] for s in by_kind(kind, "StatefulSet").values()} == {"postgresql", "redis"}
    eks, _, _ = render(VARIANTS["eks"])
    [ing] = by_kind(eks, "Ingress").values()
    assert ing["spec"]["ingressClassName"] == "alb"
    assert any(k.startswith("alb.ingress.kubernetes.io/") for k in ing["metadata"]["annotations"])
    assert "eks.amazonaws.com/role-arn" in by_kind(eks, "ServiceAccount")[RELEASE]["metadata"]["annotations"]
    gke, _, _ = render(VARIANTS["gke"])
    assert by_kind(gke, "HTTPRoute")
    assert "iam.gke.io/gcp-service-account" in by_kind(gke, "ServiceAccount")[RELEASE]["metadata"]["annotations"]
    for objs in (eks, gke):
        assert len(by_kind(objs, "HorizontalPodAutoscaler")) == len(MODULES)
        assert len(by_kind(objs, "PodDisruptionBudget")) == len(MODULES)
        assert not by_kind(objs, "StatefulSet") and not by_kind(objs, "Secret")


def test_service_monitor_and_monitoring_policy():
    objs, _, _ = render(VARIANTS["everything"])
    [sm] = by_kind(objs, "ServiceMonitor").values()
    values = sm["spec"]["selector"]["matchExpressions"][0]["values"]
    assert sorted(values) == sorted(MODULES)
    for s in by_kind(objs, "Service").values():
        if component(s) in MODULES:
            assert any(p["name"] == "admin" and p["port"] == 9090 for p in s["spec"]["ports"])


def test_notes_explain_access():
    _, notes, _ = render()
    assert "kubectl -n retail port-forward svc/edge 8080:8080" in notes
    assert "grpcurl -plaintext localhost:50055 list" in notes
    _, notes, _ = render(VARIANTS["eks"])
    assert "mesh.example.com" in notes


# --------------------------------------------------------------------- database connections


def pool_env(container) -> str | None:
    entry = env_of(container).get("MESH_DATABASE_POOL_SIZE")
    return entry["value"] if entry else None


def expected_connections(merged) -> int:
    """The guard's sum, computed independently of the template: pools at most pods, Job, 3 reserved."""
    total = 3
    for svc in enabled(merged).values():
        if svc["postgres"]:
            pods = svc["hpa"]["max"] if svc["hpa"]["enabled"] else svc["replicas"]
            total += (svc.get("databasePoolSize") or merged["config"]["databasePoolSize"]) * pods
    if merged["migrations"]["enabled"]:
        total += merged["config"]["databasePoolSize"]
    return total


def test_database_pool_size_and_max_connections_defaults():
    objs, _, merged = render()
    assert by_kind(objs, "ConfigMap")[RELEASE]["data"]["MESH_DATABASE_POOL_SIZE"] == "5"
    [pg] = by_kind(objs, "StatefulSet")["postgresql"]["spec"]["template"]["spec"]["containers"]
    assert pg["args"] == ["-c", "max_connections=200"] and "command" not in pg
    # No override: every service takes the ConfigMap's value.
    for d in by_kind(objs, "Deployment").values():
        assert pool_env(d["spec"]["template"]["spec"]["containers"][0]) is None
    # The Job sets it itself: before install (external database) there is no ConfigMap yet.
    [job] = by_kind(objs, "Job").values()
    assert pool_env(job["spec"]["template"]["spec"]["containers"][0]) == "5"
    # 12 services x 5 x 1 replica + the Job's 5 + 3 reserved.
    assert expected_connections(merged) == 68


def test_per_service_pool_size_is_in_that_deployment_only():
    objs, _, _ = render({"services": {"order": {"databasePoolSize": 12},
                                      "edge": {"databasePoolSize": 7}},  # no Postgres: ignored
                         "config": {"databasePoolSize": 4}})
    assert by_kind(objs, "ConfigMap")[RELEASE]["data"]["MESH_DATABASE_POOL_SIZE"] == "4"
    for name, d in deployments_by_module(objs).items():
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert pool_env(c) == ("12" if name == "order" else None), name
        if name == "order":  # after the data store env, before extraEnv
            names = [e["name"] for e in c["env"]]
            assert names.index("MESH_DATABASE_URL") < names.index("MESH_DATABASE_POOL_SIZE")
    [job] = by_kind(objs, "Job").values()
    assert pool_env(job["spec"]["template"]["spec"]["containers"][0]) == "4"
    # null means "use config.databasePoolSize".
    objs, _, _ = render({"services": {"order": {"databasePoolSize": None}}})
    assert pool_env(deployments_by_module(objs)["order"]["spec"]["template"]["spec"]["containers"][0]) is None


def guard_message(max_connections: int, total: int) -> str:
    return re.escape(f"postgresql.maxConnections ({max_connections}) is below the {total} connections")


@pytest.mark.parametrize(
    "values, total",
    [
        ({"postgresql": {"maxConnections": 50}}, 68),
        ({"postgresql": {"maxConnections": 67}}, 68),  # one below the boundary
        # HPA: order may grow to 40 pods of 5 connections: 11 x 5 + 40 x 5 + 5 + 3.
        ({"services": {"order": {"hpa": {"enabled": True, "min": 2, "max": 40, "cpu": 75}}}}, 263),
        ({"services": {"order": {"databasePoolSize": 50, "replicas": 3}}}, 213),
        ({"config": {"databasePoolSize": 20}}, 263),
    ],
)
def test_connection_guard_fails_when_pools_exceed_max_connections(values, total):
    with pytest.raises(helm_python.HelmRenderError, match=guard_message(
            values.get("postgresql", {}).get("maxConnections", 200), total)) as err:
        render(values)
    for setting in ("config.databasePoolSize", "services.<name>.databasePoolSize"):
        assert setting in str(err.value)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"migrations": {"enabled": False}},
        {"services": {"order": {"databasePoolSize": 9, "hpa": {"enabled": True, "min": 2, "max": 6, "cpu": 75}},
                      "campaign": {"enabled": False}, "report": {"replicas": 0}}},
        VARIANTS["kind"],
    ],
)
def test_connection_guard_passes_at_the_boundary(values):
    _, _, merged = render(values)
    total = expected_connections(merged)
    objs, notes, _ = render({**copy.deepcopy(values), "postgresql": {"maxConnections": total}})
    assert by_kind(objs, "StatefulSet")["postgresql"]["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "-c", f"max_connections={total}"]
    assert f"Database connections: at most {total} " in notes
    with pytest.raises(helm_python.HelmRenderError, match=guard_message(total - 1, total)):
        render({**copy.deepcopy(values), "postgresql": {"maxConnections": total - 1}})


@pytest.mark.parametrize("variant", ["eks", "gke", "everything"])
def test_external_database_is_not_guarded_and_notes_show_the_total(variant):
    values = copy.deepcopy(VARIANTS[variant])
    values["config"] = {**values.get("config", {}), "databasePoolSize": 100}  # far above any default
    objs, notes, merged = render(values)
    assert not merged["postgresql"]["enabled"] and "postgresql" not in by_kind(objs, "StatefulSet")
    total = expected_connections(merged)
    assert total > merged["postgresql"]["maxConnections"]  # would fail with the bundled Postgres
    assert f"Database connections: at most {total} " in notes
    assert f"max_connections (SHOW max_connections;): it must be at least {total}." in notes
    _, notes, merged = render(VARIANTS[variant])
    if variant != "everything":  # the cloud profiles: 12 services x 5 x hpa.max 10 + 5 + 3
        assert expected_connections(merged) == 608
    assert f"at least {expected_connections(merged)}." in notes


@pytest.mark.parametrize(
    "bad",
    [
        {"config": {"databasePoolSize": 0}},
        {"config": {"databasePoolSize": "5"}},
        {"config": {"databasePoolSize": 1001}},  # the binary accepts 1 to 1000
        {"services": {"order": {"databasePoolSize": 0}}},
        {"services": {"order": {"databasePoolSize": "12"}}},
        {"postgresql": {"maxConnections": 0}},
        {"postgresql": {"maxConnections": "200"}},
    ],
)
def test_values_schema_rejects_bad_pool_settings(bad):
    with pytest.raises(helm_python.HelmValuesError):
        render(bad)


# --------------------------------------------------------------------- k8s/, skaffold, Dockerfile


def test_k8s_manifests_match_chart():
    proc = subprocess.run([sys.executable, str(ROOT / "tests/chart/render_k8s.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    kustomization = yaml.safe_load((ROOT / "k8s/kustomization.yaml").read_text())
    for res in kustomization["resources"]:
        assert (ROOT / "k8s" / res).is_file()
        for doc in yaml.safe_load_all((ROOT / "k8s" / res).read_text()):
            assert "helm.sh/hook" not in (doc["metadata"].get("annotations") or {})
            for version in K8S_VERSIONS[-1:]:
                kubernetes_validate.validate(doc, version, strict=True)


def test_skaffold_config():
    cfg = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert re.fullmatch(r"skaffold/v4(beta(1[1-9]|[2-9]\d))?", cfg["apiVersion"]) and cfg["kind"] == "Config"
    [artifact] = cfg["build"]["artifacts"]
    assert artifact["image"] == "mesh" and artifact["docker"]["dockerfile"] == "Dockerfile"
    [release] = cfg["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"] / "Chart.yaml").is_file()
    assert release["setValueTemplates"] == {"image.repository": "{{.IMAGE_REPO_mesh}}",
                                            "image.tag": "{{.IMAGE_TAG_mesh}}"}
    profiles = {p["name"]: p for p in cfg["profiles"]}
    assert set(profiles) == {"kind", "eks", "gke"}
    for name, p in profiles.items():
        [patch] = p["patches"]
        assert patch["value"] == [f"charts/mesh/values-{name}.yaml"]
        assert (ROOT / patch["value"][0]).is_file()


def test_dockerfile_contract():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) == 2
    assert stages[0].startswith("docker.io/library/rust:") and "RUST_VERSION=1.95" in text
    assert stages[1] == "gcr.io/distroless/cc-debian12:nonroot"
    assert "cargo build --release --locked --bin mesh" in text
    assert re.search(r"^USER 65532(:65532)?$", text, re.M)
    assert 'ENTRYPOINT ["/usr/local/bin/mesh"]' in text and 'CMD ["serve", "all"]' in text
    assert "org.opencontainers.image.title" in text
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "target/" in ignore and ".git/" in ignore


# --------------------------------------------------------------------- mTLS


@pytest.mark.parametrize("variant", ["mtls", "mtls-own-secrets"])
def test_mtls_mounts_each_services_secret_and_sets_the_tls_env(variant):
    objs, _, merged = render(VARIANTS[variant])
    prefix = merged["tls"]["secretPrefix"] or f"{RELEASE}-tls-"
    for name, d in deployments_by_module(objs).items():
        pod = d["spec"]["template"]["spec"]
        [c] = pod["containers"]
        [volume] = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == f"{prefix}{name}", name
        assert {"name": "tls", "mountPath": "/etc/mesh/tls", "readOnly": True} in c["volumeMounts"]
        env = env_of(c)
        assert env["MESH_TLS_CERT"]["value"] == "/etc/mesh/tls/tls.crt"
        assert env["MESH_TLS_KEY"]["value"] == "/etc/mesh/tls/tls.key"
        assert env["MESH_TLS_CA"]["value"] == "/etc/mesh/tls/ca.crt"
        assert env["MESH_TLS_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        assert env["MESH_TLS_RELOAD"]["value"] == merged["tls"]["reload"]


def test_mtls_with_cert_manager_renders_a_certificate_per_service_naming_its_identity():
    objs, _, merged = render(VARIANTS["mtls"])
    certificates = {component(c): c for c in by_kind(objs, "Certificate").values()}
    assert set(certificates) == set(enabled(merged)) == set(MODULES)
    for name, cert in certificates.items():
        spec = cert["spec"]
        assert spec["secretName"] == f"{RELEASE}-tls-{name}"
        assert spec["dnsNames"][0] == f"{name}.{NAMESPACE}.svc", "the identity peers check comes first"
        assert f"{name}.{NAMESPACE}.svc.cluster.local" in spec["dnsNames"]
        assert spec["issuerRef"] == {"name": "mesh-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
        assert spec["privateKey"]["rotationPolicy"] == "Always"


def test_mtls_with_own_secrets_renders_no_certificate_and_without_tls_nothing_changes():
    objs, _, _ = render(VARIANTS["mtls-own-secrets"])
    assert not by_kind(objs, "Certificate")
    objs, _, _ = render()
    assert not by_kind(objs, "Certificate")
    for d in by_kind(objs, "Deployment").values():
        pod = d["spec"]["template"]["spec"]
        assert all(v["name"] != "tls" for v in pod["volumes"])
        [c] = pod["containers"]
        assert not [e for e in c.get("env", []) if e["name"].startswith("MESH_TLS_")]


@pytest.mark.parametrize("bad", [
    {"tls": {"enabled": "yes"}},
    {"tls": {"reload": "often"}},
    {"tls": {"certManager": {"issuerRef": {"kind": "Vault"}}}},
    {"tls": {"certificates": {}}},
])
def test_values_schema_rejects_bad_tls_settings(bad):
    with pytest.raises(Exception):
        _chart().render(values=bad, name=RELEASE, namespace=NAMESPACE, is_install=True)
