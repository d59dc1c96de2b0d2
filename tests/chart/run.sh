#!/usr/bin/env bash
# Static tests of the Helm chart, k8s/, skaffold.yaml and the Dockerfile.
# Offline: Helm runs as a library (helm-python-sdk), schemas come from
# kubernetes-validate. No cluster, no Docker, no helm binary.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
"$python" -m pip install -q --disable-pip-version-check --root-user-action=ignore -r "$here/requirements.txt"
cd "$root"
exec "$python" -m pytest -q -p no:cacheprovider "$here" "$@"
