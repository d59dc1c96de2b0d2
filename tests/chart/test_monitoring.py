"""The chart's Grafana dashboard and Prometheus alerts (metrics.dashboard, metrics.alerts).

- Both off by default; on, the dashboard is a ConfigMap with the sidecar's label (configurable)
  holding valid dashboard JSON, and the alerts a PrometheusRule of the expected shape.
- The rendered rule groups pass `promtool check rules` (Debian's `prometheus` package; .ci/run
  installs it; outside CI the test is skipped loudly without it).
- Every metric the dashboard's and the rules' PromQL names is exported by the real binary: a
  `mesh serve all` places an order through the edge's REST API, and its admin port's /metrics
  must list each name (a sample, or a registered family with its type's suffixes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from test_chart import NAMESPACE, by_kind, render
from test_module_table import mesh_binary

BOTH = {"metrics": {"dashboard": {"enabled": True}, "alerts": {"enabled": True}}}


def dashboard_and_rule(values=None):
    objs, _, _ = render(BOTH if values is None else values)
    maps = [o for o in by_kind(objs, "ConfigMap").values() if o["metadata"]["name"].endswith("-dashboard")]
    rules = list(by_kind(objs, "PrometheusRule").values())
    return maps, rules


def dashboard_json(cm) -> dict:
    [(name, text)] = cm["data"].items()
    assert name.endswith(".json")
    return json.loads(text)


def dashboard_exprs(dash) -> list[str]:
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append(target["expr"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            # label_values(metric, label)
            out.append(re.fullmatch(r"label_values\((\w+), \w+\)", var["definition"]).group(1))
    return out


def rule_exprs(rule) -> list[str]:
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


# --------------------------------------------------------------------- rendering


def test_dashboard_and_alerts_are_off_by_default():
    maps, rules = dashboard_and_rule({})
    assert maps == [] and rules == []


def test_dashboard_configmap_carries_the_sidecar_label_and_valid_json():
    maps, _ = dashboard_and_rule()
    [cm] = maps
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = dashboard_json(cm)
    assert dash["uid"] and dash["title"]
    titles = {p["title"] for p in dash["panels"]}
    for wanted in ("Rate: calls/s", "Errors: share of calls ending in a server error", "Duration: p50 / p99",
                   "Consumer lag (events behind the stream head)", "Dead letters (new)",
                   "Oldest unpublished outbox row", "Relay publish latency p99"):
        assert wanted in titles, titles
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    # The label and extra annotations follow the values (e.g. another sidecar label, a folder).
    other = {"metrics": {"dashboard": {"enabled": True, "label": "dashboards", "labelValue": "mesh",
                                       "annotations": {"grafana_folder": "Retail"}}}}
    [cm] = dashboard_and_rule(other)[0]
    assert cm["metadata"]["labels"]["dashboards"] == "mesh"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Retail"}


def test_prometheus_rule_has_the_alerts_and_their_thresholds_follow_values():
    _, [rule] = dashboard_and_rule()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    alerts = {}
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"]
        for r in group["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
            assert r["labels"]["severity"] in {"warning", "critical"}
            assert r["annotations"]["summary"] and r["annotations"]["description"]
            if "for" in r:
                assert re.fullmatch(r"\d+[smh]", r["for"])
            alerts[r["alert"]] = r["expr"]
    assert set(alerts) == {"MeshConsumerLagHigh", "MeshConsumerStalled", "MeshDeadLettersGrowing",
                           "MeshOutboxStale", "MeshErrorRatioHigh", "MeshSagaTimeouts",
                           "MeshOrdersRefused"}
    assert alerts["MeshConsumerLagHigh"].endswith("> 1000")
    tuned = {"metrics": {"alerts": {"enabled": True, "consumerLagEvents": 50, "errorRatio": 0.2,
                                    "labels": {"release": "kube-prometheus-stack"}}}}
    [rule] = dashboard_and_rule(tuned)[1]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    exprs = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert exprs["MeshConsumerLagHigh"].endswith("> 50")
    assert exprs["MeshErrorRatioHigh"].rstrip().endswith("> 0.2")


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (.ci/run installs Debian's prometheus package)")
        print("SKIPPED: promtool not installed (apt-get install --no-install-recommends prometheus)",
              file=sys.stderr)
        pytest.skip("promtool not installed")
    return found


def test_rules_pass_promtool_check_rules():
    tool = promtool()
    _, [rule] = dashboard_and_rule()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mesh-rules.yaml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        done = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout + done.stderr
        # promtool is not a rubber stamp: a broken expression fails it.
        broken = {"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "sum(rate(x[5m])"}]}]}
        path.write_text(yaml.safe_dump(broken))
        assert subprocess.run([tool, "check", "rules", str(path)], capture_output=True).returncode != 0


# --------------------------------------------------------------------- metric names

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names, label
    values, ranges and numbers left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        rest = text[m.end():].lstrip()
        word = m.group(0)
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue
        if m.start() > 0 and text[m.start() - 1] in "$.0123456789":
            continue
        names.add(word)
    return names


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.99, sum by (grpc_service, le) '
                        '(rate(grpc_server_handling_seconds_bucket{grpc_service=~"$service"}[$__rate_interval])))') \
        == {"grpc_server_handling_seconds_bucket"}
    assert metric_names("sum by (namespace) (increase(order_saga_timeouts_total[15m])) > 0") \
        == {"order_saga_timeouts_total"}
    assert metric_names("a_total / on (x) group_left b > 1e3") == {"a_total", "b"}


def exported_names(body: str) -> set[str]:
    """Every series name /metrics can show: the samples, and each registered family with the
    suffixes of its type (a labelled family shows no sample before its first use)."""
    names = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""],
                "summary": ["_sum", "_count", ""], "unknown": [""], "info": ["_info"]}
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            names.update(family + s for s in suffixes.get(kind, [""]))
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def rest(base: str, method: str, path: str, body=None, token: str | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        raise AssertionError(f"{method} {path}: {err.code} {err.read()!r}") from None


@pytest.fixture(scope="module")
def mesh_after_an_order():
    """The admin /metrics body of a `mesh serve all` after one confirmed order."""
    binary = mesh_binary()
    if not binary:
        if os.environ.get("CI"):
            pytest.fail("no mesh binary (MESH_BIN)")
        print("SKIPPED: no mesh binary; build it or set MESH_BIN", file=sys.stderr)
        pytest.skip("no mesh binary")
    modules = json.loads(subprocess.run([binary, "modules", "--json"], capture_output=True,
                                        check=True).stdout)
    with tempfile.TemporaryDirectory() as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
        env.update({"MESH_ADMIN_PORT": "0", "MESH_DATA_DIR": data, "MESH_LOG": "warn",
                    "MESH_AUTH_BOOTSTRAP_ADMIN_EMAIL": "admin@example.com",
                    "MESH_SERVICE_CLIENT_SECRET": "chart-test-secret"})
        for m in modules:
            env["MESH_" + m["name"].upper().replace("-", "_") + "_PORT"] = "0"
        out = open(Path(data) / "out", "w+")
        proc = subprocess.Popen([binary, "serve", "all"], env=env, stdout=out, stderr=subprocess.DEVNULL)
        try:
            addrs = {}
            deadline = time.time() + 60
            while "admin" not in addrs:
                assert proc.poll() is None, "mesh serve all exited"
                assert time.time() < deadline, "mesh serve all not ready in 60 s"
                time.sleep(0.1)
                out.seek(0)
                for line in out.read().splitlines():
                    words = line.split()
                    if len(words) >= 3 and words[0] == "ready":
                        addrs[words[1]] = "http://" + words[2].split("://", 1)[1]
            edge = addrs["edge"]
            pw = "correct horse battery"
            rest(edge, "POST", "/v1/auth:signUp", {"email": "admin@example.com", "password": pw})
            admin = rest(edge, "POST", "/v1/auth:login",
                         {"email": "admin@example.com", "password": pw})["tokens"]["accessToken"]
            product = rest(edge, "POST", "/v1/products",
                           {"sku": "COLA-033", "name": "Cola 0.33 l", "active": True,
                            "price": {"currencyCode": "EUR", "amountMinor": "250"}}, admin)["product"]["id"]
            rest(edge, "POST", f"/v1/locations/default/stock/{product}:adjust",
                 {"delta": "10", "reason": "ADJUSTMENT_REASON_RESTOCK"}, admin)
            customer = rest(edge, "POST", "/v1/auth:signUp",
                            {"email": "ada@example.com", "password": pw})["tokens"]["accessToken"]
            order = rest(edge, "POST", "/v1/orders", {
                "idempotencyKey": "chart-metrics",
                "lines": [{"productId": product, "quantity": 1}],
                "shippingAddress": {"recipientName": "Ada", "addressLines": ["1 Main St"], "regionCode": "DE"},
                "paymentMethod": {"card": {"number": "4242424242424242", "expiry": "12/39", "cvc": "123"}},
            }, customer)["order"]["id"]
            status = ""
            while status != "ORDER_STATUS_CONFIRMED":
                assert time.time() < deadline + 30, f"order {order} is {status} after the deadline"
                status = rest(edge, "GET", f"/v1/orders/{order}", token=customer)["status"]  # response_body: order
                assert status != "ORDER_STATUS_CANCELLED"
                time.sleep(0.1)
            with urllib.request.urlopen(addrs["admin"] + "/metrics", timeout=10) as response:
                yield response.read().decode()
        finally:
            proc.kill()
            proc.wait()
            out.close()


def test_every_metric_the_dashboard_and_alerts_use_is_exported(mesh_after_an_order):
    exported = exported_names(mesh_after_an_order)
    # The scrape is real: the saga's series are there.
    assert "grpc_server_handled_total" in exported
    assert 'mesh_consumer_events_total{group="order",outcome="handled"}' in mesh_after_an_order
    maps, [rule] = dashboard_and_rule()
    used = {}
    for expr in dashboard_exprs(dashboard_json(maps[0])):
        for name in metric_names(expr):
            used.setdefault(name, "dashboard")
    for expr in rule_exprs(rule):
        for name in metric_names(expr):
            used.setdefault(name, "alerts")
    assert len(used) >= 12, used
    missing = {name: where for name, where in used.items() if name not in exported}
    assert not missing, f"named in PromQL but not exported by `mesh serve all`: {missing}"
