#!/usr/bin/env bash
# Take a backup bundle now: a thin shim onto `./sparkq.sh backup` (works from any cwd, also while
# the server runs). Arguments are passed through, e.g. --json.
set -euo pipefail

src="$(readlink -f "${BASH_SOURCE[0]}" 2>/dev/null || echo "${BASH_SOURCE[0]}")"  # follow symlinks
REPO="$(cd -P "$(dirname "$src")/../.." && pwd)"

case "${1:-}" in
  -h|--help)
    echo "Usage: $(basename "$0") [--json]   take a backup now (same as ./sparkq.sh backup)"
    exit 0 ;;
esac
exec "$REPO/sparkq.sh" backup "$@"
