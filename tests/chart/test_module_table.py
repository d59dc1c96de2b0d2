"""The chart's `services:` values mirror the binary's module table (`mesh modules --json`).

Names, ports and dependencies must match exactly: the chart derives MESH_<DEP>_ADDR and the
NetworkPolicies from `dependencies`, and the binary refuses channels to undeclared peers, so a
drift would break calls in a cluster. Needs the built binary: MESH_BIN, or
$CARGO_TARGET_DIR/debug/mesh, or target/debug/mesh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def mesh_binary() -> Path | None:
    candidates = [os.environ.get("MESH_BIN")]
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "debug", "mesh"))
    candidates.append(str(ROOT / "target" / "debug" / "mesh"))
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def test_chart_services_mirror_the_module_table():
    binary = mesh_binary()
    if binary is None:
        print("SKIPPED: no mesh binary; build it or set MESH_BIN", file=sys.stderr)
        pytest.skip("no mesh binary; build it (cargo build) or set MESH_BIN")
    table = json.loads(subprocess.run([binary, "modules", "--json"], check=True,
                                      capture_output=True, text=True).stdout)
    values = yaml.safe_load((ROOT / "charts/mesh/values.yaml").read_text())["services"]
    for row in table:
        name = row["name"]
        assert name in values, f"module {name} has no entry in charts/mesh/values.yaml"
        assert values[name]["port"] == row["port"], f"{name}: port differs"
        assert sorted(values[name]["dependencies"]) == sorted(row["dependencies"]), (
            f"{name}: chart dependencies {values[name]['dependencies']} != binary {row['dependencies']}"
        )
    names = {row["name"] for row in table}
    extra = set(values) - names
    assert not extra, f"chart services not in the module table: {sorted(extra)}"
