#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 600) with cargo-fuzz on nightly,
# after seeding its corpus from the repository's own files: the webhook
# fixtures (both wire formats), the example config and the example plugins'
# manifests. Findings land in fuzz/artifacts/<target>/.
#
#   bash fuzz/run.sh            # every target, 10 minutes each
#   bash fuzz/run.sh 60 webhook # one target, one minute
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(webhook signatures config host_imports)
fi
mkdir -p corpus/webhook corpus/config corpus/signatures corpus/host_imports
for fixture in ../tests/fixtures/*/*.json; do
  cp -f "$fixture" "corpus/webhook/$(basename "$(dirname "$fixture")")-$(basename "$fixture")"
done
cp -f ../switchboard.example.toml corpus/config/
for manifest in ../plugins/*/plugin.toml; do
  cp -f "$manifest" "corpus/config/$(basename "$(dirname "$manifest")").toml"
done
for t in "${targets[@]}"; do
  echo "== $t: ${secs}s"
  # No sanitizer: the code under test is safe Rust (debug assertions stay on),
  # and runs several times faster without ASan.
  cargo +nightly fuzz run --sanitizer none "$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1
done
