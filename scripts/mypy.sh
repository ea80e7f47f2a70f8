#!/usr/bin/env bash
# mypy sees our folders under their installed names (ferry.model -> model/, ...) through a
# throw-away tree of symlinks, so the checked module names match the import names.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/ferry"
cp "$root"/ferry/*.py "$tree/ferry/"
ln -s "$root/ferry/commands" "$tree/ferry/commands"
for pkg in model server client proto; do ln -s "$root/$pkg" "$tree/ferry/$pkg"; done
cd "$root"
MYPYPATH="$tree" "${MYPY:-.venv/bin/mypy}" --config-file pyproject.toml -p ferry "$@"
