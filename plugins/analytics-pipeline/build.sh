#!/bin/sh
# Builds analytics-pipeline.wasm from C. Run by `switchboard plugin build`
# with OUT_DIR, SWITCHBOARD_WIT (the repository's wit/) and
# SWITCHBOARD_WASI_ADAPTER (wasmtime's preview1 reactor adapter) set, and the
# pinned wit-bindgen and wasm-tools (plugin.toml's [build] requires) on PATH.
# Needs Debian's clang-14, lld-14, wasi-libc and libclang-rt-14-dev-wasm32.
set -eu
gen="$OUT_DIR/analytics-pipeline.gen"
rm -rf "$gen" && mkdir -p "$gen"
wit-bindgen c "$SWITCHBOARD_WIT" --world switchboard:plugin/plugin@0.2.0 --out-dir "$gen" > /dev/null
clang-14 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Werror \
  -I"$gen" -o "$gen/core.wasm" plugin.c "$gen/plugin.c" "$gen/plugin_component_type.o"
wasm-tools component new "$gen/core.wasm" --adapt "wasi_snapshot_preview1=$SWITCHBOARD_WASI_ADAPTER" \
  -o "$OUT_DIR/analytics-pipeline.wasm"
