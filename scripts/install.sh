#!/usr/bin/env bash
# Builds the release binary, installs it as ~/.local/bin/rolloutd (and its man page), then
# sets it up as a user service with `rolloutd service install`.
#   scripts/install.sh [--dry-run] [any other `service install` option]
# --dry-run builds nothing and installs nothing: it prints what it would do, including
# every file and command of `service install --dry-run`.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=false
for arg in "$@"; do
  [ "$arg" = "--dry-run" ] && dry_run=true
done

bin_dir="${HOME:?HOME is not set}/.local/bin"
man_dir="${XDG_DATA_HOME:-$HOME/.local/share}/man/man1"
target="$bin_dir/rolloutd"

run() {
  if $dry_run; then
    echo "would run: $*"
  else
    "$@"
  fi
}

run cargo build --release --locked
run install -d "$bin_dir" "$man_dir"
# Replace by rename, so a running agent keeps its old binary until it restarts.
run install -m 0755 target/release/rolloutd "$target.new"
run mv -f "$target.new" "$target"
if $dry_run; then
  echo "would run: $target man > $man_dir/rolloutd.1"
  # The plan is printed by the binary itself; an existing build shows it exactly.
  if [ -x target/release/rolloutd ]; then
    exec target/release/rolloutd service install --bin "$target" "$@"
  fi
  echo "would run: $target service install $*"
  exit 0
fi
"$target" man > "$man_dir/rolloutd.1"
exec "$target" service install "$@"
