#!/usr/bin/env bash
# Proves rolloutd against the real Codex CLI: installs each @openai/codex release of the
# matrix with npm into a cache directory (reused when present), then runs
# tests/codex_interop.rs against it, which serves its own mock model provider on a free
# loopback port, so nothing leaves the machine.
#
#   scripts/codex-interop.sh            # install if needed, run the interop tests per release
#   scripts/codex-interop.sh --bin 0.169.0   # install if needed, print the binary's path only
#
# Environment:
#   ROLLOUTD_CODEX_VERSIONS the releases to run, space-separated, each VERSION or
#                           VERSION:FILTER (a test-name filter). Default
#                           "0.169.0 0.171.0 0.124.0:seed_bugs": the release the seed reports
#                           came from, the newest on npm when this was written, and an older
#                           one that still compares a running thread's path literally and
#                           hands a directory to the rollout reader (only the test showing
#                           the shim fixing that runs there: its state DB predates columns
#                           the other tests read)
#   ROLLOUTD_CODEX_VERSION  a single release instead (kept for older callers)
#   ROLLOUTD_CODEX_CACHE    where to install a single release (default
#                           $XDG_CACHE_HOME/rolloutd/codex-<version>, one per release)
#   ROLLOUTD_CODEX_BIN      use this Codex binary instead of installing any
#
# Outside CI, a missing npm or an unreachable registry skips with a message; under CI=true it
# fails, so the interop proof can never be skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."

versions="${ROLLOUTD_CODEX_VERSIONS:-${ROLLOUTD_CODEX_VERSION:-0.169.0 0.171.0 0.124.0:seed_bugs}}"

skip_or_fail() {
  if [ "${CI:-}" = "true" ]; then
    echo "codex-interop: $1 (CI=true: failing rather than skipping)" >&2
    exit 1
  fi
  echo "codex-interop: skipped: $1" >&2
  exit 0
}

run_tests() {
  "$1" --version
  echo "== interop tests against $1${2:+ (only $2)}"
  ROLLOUTD_CODEX_BIN="$1" cargo test --locked --test codex_interop -- --nocapture ${2:+"$2"}
}

print_only=""
if [ "${1:-}" = "--bin" ]; then
  print_only=1
  versions="${2:?--bin needs a version}"
elif [ -n "${ROLLOUTD_CODEX_BIN:-}" ]; then
  run_tests "$ROLLOUTD_CODEX_BIN"
  exit 0
fi

set -- $versions
for entry in "$@"; do
  version="${entry%%:*}"
  filter=""
  [ "$entry" = "$version" ] || filter="${entry#*:}"
  if [ $# -eq 1 ] && [ -n "${ROLLOUTD_CODEX_CACHE:-}" ]; then
    cache="$ROLLOUTD_CODEX_CACHE"
  else
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/rolloutd/codex-$version"
  fi
  find_bin() {
    # vendor/<target>/bin/codex in current packages, vendor/<target>/codex/codex in older ones
    # (nothing yet on a fresh machine: find's failure must not end the script under pipefail)
    [ -d "$cache/node_modules/@openai" ] || return 0
    find "$cache/node_modules/@openai" \( -path '*/vendor/*/bin/codex' -o -path '*/vendor/*/codex/codex' \) \
      -type f 2>/dev/null | head -n 1 || true
  }
  bin="$(find_bin)"
  if [ -z "$bin" ]; then
    command -v npm >/dev/null 2>&1 || skip_or_fail "npm is not installed"
    mkdir -p "$cache"
    echo "== installing @openai/codex@$version into $cache" >&2
    npm install --prefix "$cache" --no-audit --no-fund --loglevel=error "@openai/codex@$version" >&2 \
      || skip_or_fail "npm could not install @openai/codex@$version"
    bin="$(find_bin)"
    [ -n "$bin" ] || skip_or_fail "the @openai/codex@$version package has no prebuilt binary for this platform"
  fi
  if [ -n "$print_only" ]; then
    echo "$bin"
    exit 0
  fi
  run_tests "$bin" "$filter"
done
