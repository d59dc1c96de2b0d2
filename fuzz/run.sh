#!/usr/bin/env bash
# Builds the cargo-fuzz targets once and runs each for a bounded time from its checked-in seed
# corpus (fuzz/corpus/<target>/, read only: new inputs go to a scratch folder). A crash, a
# failed invariant or a timeout fails the run; libFuzzer writes the input to
# fuzz/artifacts/<target>/ (reproduce: docs/fuzzing.md).
# Usage: fuzz/run.sh [seconds per target, default 20] [target...]   (default: every target)
# Environment: MESH_FUZZ_TARGET_DIR (default /var/tmp/mesh-fuzz-target, reused between runs),
#   MESH_FUZZ_CORPUS_OUT (keep the grown corpus there instead of a temporary folder),
#   MESH_FUZZ_SEED (libFuzzer's -seed: the same number explores the same inputs in the same order,
#   so a gating run is repeatable; unset, every run explores differently).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(path_template transcode wire_json grpc_web jwt event_envelope)
target_dir="${MESH_FUZZ_TARGET_DIR:-/var/tmp/mesh-fuzz-target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  root="${MESH_CI_TOOLS:-/var/tmp/mesh-tools}"
  cargo install --locked --quiet cargo-fuzz --version 0.13.2 --root "$root"
  export PATH="$root/bin:$PATH"
fi

# libFuzzer's instrumentation uses nightly-only compiler flags; RUSTC_BOOTSTRAP allows them on
# the stable toolchain for this build only. No AddressSanitizer: the code under test is safe Rust
# (`unsafe_code = "forbid"`), and ASan doubles the build and halves the runs.
fuzz() {
  local command="$1"
  shift
  RUSTC_BOOTSTRAP=1 cargo fuzz "$command" --sanitizer none --target-dir "$target_dir" "$@"
}

start=$(date +%s)
fuzz build
echo "fuzz build: $(($(date +%s) - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  out="${MESH_FUZZ_CORPUS_OUT:-$scratch}/$target"
  mkdir -p "$out"
  echo "fuzz: $target for ${seconds} s"
  # -timeout: an input taking over 10 s is a hang; -rss_limit_mb: a leak or a blow-up.
  status=0
  seed=()
  [ -z "${MESH_FUZZ_SEED:-}" ] || seed=(-seed="$MESH_FUZZ_SEED")
  fuzz run "$target" "$out" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${seed[@]}" \
    >"$scratch/$target.log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$scratch/$target.log" >&2
    echo "fuzz: $target FAILED (exit $status)" >&2
    exit 1
  fi
  grep -E '^(INFO: seed corpus|#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' \
    "$scratch/$target.log" || true
done
echo "fuzz: every target ran ${seconds} s without a failure ($(($(date +%s) - start)) s in all)"
