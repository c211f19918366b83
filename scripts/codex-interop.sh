#!/usr/bin/env bash
# Proves rolloutd against the real Codex CLI: installs each @openai/codex release of the
# matrix with npm into a cache directory (reused when present), then runs
# tests/codex_interop.rs against it, which serves its own mock model provider on a free
# loopback port, so nothing leaves the machine.
#
#   scripts/codex-interop.sh            # install if needed, run the interop tests per release
#
# Environment:
#   ROLLOUTD_CODEX_VERSIONS the releases to run, space-separated (default "0.169.0 0.171.0":
#                           the release the seed reports came from, and the newest on npm
#                           when this was written)
#   ROLLOUTD_CODEX_VERSION  a single release instead (kept for older callers)
#   ROLLOUTD_CODEX_CACHE    where to install a single release (default
#                           $XDG_CACHE_HOME/rolloutd/codex-<version>, one per release)
#   ROLLOUTD_CODEX_BIN      use this Codex binary instead of installing any
#
# Outside CI, a missing npm or an unreachable registry skips with a message; under CI=true it
# fails, so the interop proof can never be skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."

versions="${ROLLOUTD_CODEX_VERSIONS:-${ROLLOUTD_CODEX_VERSION:-0.169.0 0.171.0}}"

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
  echo "== interop tests against $1"
  ROLLOUTD_CODEX_BIN="$1" cargo test --locked --test codex_interop -- --nocapture
}

if [ -n "${ROLLOUTD_CODEX_BIN:-}" ]; then
  run_tests "$ROLLOUTD_CODEX_BIN"
  exit 0
fi

set -- $versions
for version in "$@"; do
  if [ $# -eq 1 ] && [ -n "${ROLLOUTD_CODEX_CACHE:-}" ]; then
    cache="$ROLLOUTD_CODEX_CACHE"
  else
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/rolloutd/codex-$version"
  fi
  find_bin() {
    find "$cache/node_modules/@openai" -path '*/vendor/*/bin/codex' -type f 2>/dev/null | head -n 1
  }
  bin="$(find_bin)"
  if [ -z "$bin" ]; then
    command -v npm >/dev/null 2>&1 || skip_or_fail "npm is not installed"
    mkdir -p "$cache"
    echo "== installing @openai/codex@$version into $cache"
    npm install --prefix "$cache" --no-audit --no-fund --loglevel=error "@openai/codex@$version" \
      || skip_or_fail "npm could not install @openai/codex@$version"
    bin="$(find_bin)"
    [ -n "$bin" ] || skip_or_fail "the @openai/codex@$version package has no prebuilt binary for this platform"
  fi
  run_tests "$bin"
done
