#!/usr/bin/env bash
# Runs the same gates as CI, locally: formatting, lints, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .ci/run
