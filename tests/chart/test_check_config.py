"""Every container the chart renders passes the binary's own settings check.

For each values variant, each Deployment's container and the migration Job's are given the
environment Kubernetes would give them (the ConfigMap through envFrom, then the container's own
env with `$(VAR)` expanded; Secret references stand for plausible values), and run their own
command with `--check-config` (`mesh serve <service> --check-config`, `mesh migrate all
--check-config`): the binary checks every setting that process would read (process flags, the
service's own declared settings, server protection, fault switches) without binding a port or
opening a database, and exits 0, or 1 naming every bad setting. A bad value in a service's
`extraEnv` is caught the same way. Needs the built binary (see test_module_table.py).
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from test_chart import NAMESPACE, VARIANTS, by_kind, render
from test_module_table import mesh_binary

# What a secretKeyRef stands for: values of the shape the Secret must hold.
SECRET_STAND_INS = {
    "MESH_DATABASE_URL": "postgres://mesh:pw@db.example:5432/mesh",
    "MESH_REDIS_URL": "redis://cache.example:6379",
    "POSTGRES_PASSWORD": "pw",
    "MESH_PAGE_TOKEN_KEY": "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL",
}


def binary():
    found = mesh_binary()
    if found is None:
        print("SKIPPED: no mesh binary; build it or set MESH_BIN", file=sys.stderr)
        pytest.skip("no mesh binary; build it (cargo build) or set MESH_BIN")
    return found


def container_env(container: dict, configmaps: dict) -> dict[str, str]:
    """The environment of `container` as the kubelet builds it (envFrom, then env)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref, f"only ConfigMap envFrom is modelled here: {source}"
        data = configmaps.get(ref["name"])
        if data is None:
            assert ref.get("optional"), f"missing ConfigMap {ref['name']}"
            continue
        env.update(data.get("data", {}))
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            # $(VAR) refers to a variable defined before this one; others stay as written.
            env[name] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"])
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[name] = NAMESPACE
        else:
            assert "secretKeyRef" in item.get("valueFrom", {}), f"{name}: {item}"
            env[name] = SECRET_STAND_INS.get(name, "a-secret")
    return env


@functools.lru_cache(maxsize=None)
def dev_certs() -> Path:
    """Certificates from `mesh certs`, standing in for the mounted TLS Secrets."""
    out = Path(tempfile.mkdtemp(prefix="mesh-chart-certs-"))
    subprocess.run([binary(), "certs", "--out", str(out), "--namespace", NAMESPACE],
                   check=True, capture_output=True, timeout=60)
    return out


@functools.lru_cache(maxsize=None)
def secret_file(content: str) -> Path:
    """A file holding `content`, standing in for one key of a mounted Secret."""
    fd, path = tempfile.mkstemp(prefix="mesh-chart-secret-")
    with open(fd, "w") as f:
        f.write(content)
    return Path(path)


# Notification's settings naming files of mounted Secrets, and what a file of that shape holds
# (the check reads them: a CA file must hold certificates, webhook keys are 16+ characters).
NOTIFICATION_FILES = {
    "MESH_NOTIFICATION_SMTP_PASSWORD_FILE": lambda: secret_file("a-smtp-password"),
    "MESH_NOTIFICATION_WEBHOOK_SECRET_FILE": lambda: secret_file("a-webhook-key-of-32-characters!!"),
    "MESH_NOTIFICATION_SMTP_CA_FILE": lambda: dev_certs() / "ca.pem",
    "MESH_NOTIFICATION_WEBHOOK_CA_FILE": lambda: dev_certs() / "ca.pem",
}


def with_mounted_tls(argv: list[str], env: dict[str, str]) -> dict[str, str]:
    """`env` with the mounted Secrets standing for real files: the TLS Secret's mount point
    (/etc/mesh/tls) the service's certificate from `mesh certs`, notification's SMTP and webhook
    Secrets files of the right shape."""
    env = {k: str(NOTIFICATION_FILES[k]()) if k in NOTIFICATION_FILES else v for k, v in env.items()}
    if "MESH_TLS_CERT" not in env:
        return env
    certs = dev_certs()
    files = {
        "/etc/mesh/tls/tls.crt": certs / f"{argv[1]}.pem",
        "/etc/mesh/tls/tls.key": certs / f"{argv[1]}.key",
        "/etc/mesh/tls/ca.crt": certs / "ca.pem",
    }
    return {k: str(files.get(v, v)) for k, v in env.items()}


def processes(objs) -> list[tuple[str, list[str], dict[str, str]]]:
    """(what, argv after the binary, environment) of every mesh container rendered."""
    configmaps = by_kind(objs, "ConfigMap")
    found = []
    for kind in ("Deployment", "Job"):
        for name, obj in by_kind(objs, kind).items():
            for c in obj["spec"]["template"]["spec"]["containers"]:
                if c.get("command") != ["/usr/local/bin/mesh"]:
                    continue
                argv = list(c["args"])
                found.append((f"{kind}/{name}", argv, with_mounted_tls(argv, container_env(c, configmaps))))
    return found


def check(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary(), *argv, "--check-config"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_container_passes_the_binary_settings_check(variant):
    objs, _, merged = render(VARIANTS[variant])
    found = processes(objs)
    served = {argv[1] for _, argv, _ in found if argv[0] == "serve"}
    enabled = {n for n, s in merged["services"].items() if s["enabled"]}
    assert served == enabled, f"{variant}: a Deployment per enabled service"
    for what, argv, env in found:
        out = check(argv, env)
        assert out.returncode == 0, f"{variant} {what} {argv}: {out.stderr}"
        assert "configuration is valid" in out.stdout, out.stdout


def test_a_bad_service_setting_in_the_chart_is_named_by_the_check():
    values = {
        "services": {
            "payment": {
                "extraEnv": [
                    {"name": "MESH_PAYMENT_MAX_ATTEMPTS", "value": "0"},
                    {"name": "MESH_PAYMENT_PROVIDER_TIMEOUT", "value": "soon"},
                ]
            }
        }
    }
    objs, _, _ = render(values)
    [(what, argv, env)] = [p for p in processes(objs) if p[1][:2] == ["serve", "payment"]]
    out = check(argv, env)
    assert out.returncode == 1, f"{what}: {out.stdout}{out.stderr}"
    for name in ("MESH_PAYMENT_MAX_ATTEMPTS", "MESH_PAYMENT_PROVIDER_TIMEOUT"):
        assert name in out.stderr, out.stderr


def test_a_bad_page_token_key_in_the_secret_is_named_by_the_check():
    objs, _, _ = render()
    [(what, argv, env)] = [p for p in processes(objs) if p[1][:2] == ["serve", "order"]]
    out = check(argv, {**env, "MESH_PAGE_TOKEN_KEY": "too-short-a-key"})
    assert out.returncode == 1, f"{what}: {out.stdout}{out.stderr}"
    assert "MESH_PAGE_TOKEN_KEY" in out.stderr and "too short" in out.stderr, out.stderr
    assert "too-short-a-key" not in out.stderr, "the key is printed"
