#!/usr/bin/env bash
# Proves rolloutd against the real Codex CLI: installs @openai/codex with npm into a cache
# directory (reused when present), then runs tests/codex_interop.rs, which serves its own
# mock model provider on a free loopback port, so nothing leaves the machine.
#
#   scripts/codex-interop.sh            # install if needed, run the interop tests
#
# Environment:
#   ROLLOUTD_CODEX_VERSION  the Codex version to install (default 0.169.0)
#   ROLLOUTD_CODEX_CACHE    where to install it (default $XDG_CACHE_HOME/rolloutd/codex-<version>)
#   ROLLOUTD_CODEX_BIN      use this Codex binary instead of installing one
#
# Outside CI, a missing npm or an unreachable registry skips with a message; under CI=true it
# fails, so the interop proof can never be skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."

version="${ROLLOUTD_CODEX_VERSION:-0.169.0}"
cache="${ROLLOUTD_CODEX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rolloutd/codex-$version}"

skip_or_fail() {
  if [ "${CI:-}" = "true" ]; then
    echo "codex-interop: $1 (CI=true: failing rather than skipping)" >&2
    exit 1
  fi
  echo "codex-interop: skipped: $1" >&2
  exit 0
}

if [ -z "${ROLLOUTD_CODEX_BIN:-}" ]; then
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
    [ -n "$bin" ] || skip_or_fail "the @openai/codex package has no prebuilt binary for this platform"
  fi
  export ROLLOUTD_CODEX_BIN="$bin"
fi

"$ROLLOUTD_CODEX_BIN" --version
echo "== interop tests against $ROLLOUTD_CODEX_BIN"
cargo test --locked --test codex_interop -- --nocapture
