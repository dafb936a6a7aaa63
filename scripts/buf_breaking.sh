#!/usr/bin/env bash
# buf breaking against the proto that callers may already have generated clients from
# (make proto-lint, part of make lint and CI). What the working tree is compared with:
#
#   1. HEAD, when the working tree changes the proto (a change being made);
#   2. else the main branch, when HEAD is on another branch (a change under review);
#   3. else, on main itself, the proto as it was before its latest change, so the latest
#      change that landed is checked even when CI runs after it (comparing main with
#      itself would check nothing).
#
# Usage: scripts/buf_breaking.sh BUF
set -euo pipefail
buf=${1:?usage: buf_breaking.sh BUF}
protos=protos

if ! git rev-parse --verify --quiet HEAD >/dev/null; then
    echo "buf breaking: no commit to compare with; skipped"
    exit 0
fi
if ! git diff --quiet HEAD -- "$protos"; then
    against=HEAD
elif git rev-parse --verify --quiet main >/dev/null \
    && [ "$(git rev-parse HEAD)" != "$(git rev-parse main)" ]; then
    against=main
else
    latest=$(git log -n1 --format=%H -- "$protos")
    against=$(git rev-parse --verify --quiet "$latest^" || true)
    if [ -z "$against" ]; then
        echo "buf breaking: the proto has no earlier version; skipped"
        exit 0
    fi
fi
echo "buf breaking --against .git#ref=$against"
"$buf" breaking --against ".git#ref=$(git rev-parse "$against")"
