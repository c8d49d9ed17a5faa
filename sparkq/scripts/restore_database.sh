#!/usr/bin/env bash
# Backup browsing and restore verbs, kept for people used to this script. Each verb is a thin
# shim onto ./sparkq.sh (the `sparkq` CLI), so both always behave the same. Works from any cwd.
set -euo pipefail

src="$(readlink -f "${BASH_SOURCE[0]}" 2>/dev/null || echo "${BASH_SOURCE[0]}")"  # follow symlinks
REPO="$(cd -P "$(dirname "$src")/../.." && pwd)"
SPARKQ="$REPO/sparkq.sh"
ME="$(basename "$0")"

usage() {
  cat <<USAGE
Usage: $ME VERB [N|NAME] [OPTIONS]

  list                      list backups, 1 = newest           (sparkq.sh backup-list)
  show N                    manifest and files of backup N     (sparkq.sh backup-show N)
  restore N [OPTIONS]       restore backup N; OPTIONS as for sparkq.sh backup-restore:
                            --db-only, --config-only, --tables T,.., --yes
  restore-config N [--yes]  restore sparkq.yml only           (backup-restore N --only yml)
  restore-env N [--yes]     restore .env only                 (backup-restore N --only env)
  restore-templates N [--yes]
                            restore setup_templates/*         (backup-restore N --only templates)
  export-config N           print the config entries of N as JSON
  export-tools N            print the tools of N as JSON
  export-prompts N          print the prompts of N as JSON

N is a number from 'list' (1 = newest) or a backup name. Restores ask before changing anything;
--yes skips the question. Exit codes are those of sparkq.sh: 0 ok, 1 failure, 2 usage,
4 no such backup, 5 verification failed, 6 in use.
USAGE
}

need_ref() {
  if [ $# -lt 1 ] || [ -z "$1" ]; then
    echo "$ME: '$verb' needs a backup number or name (see: $ME list)" >&2
    exit 2
  fi
}

verb="${1:-}"
case "$verb" in
  ""|-h|--help|help)
    usage
    exit 0 ;;
esac
shift

case "$verb" in
  list)              exec "$SPARKQ" backup-list "$@" ;;
  show)              need_ref "$@"; exec "$SPARKQ" backup-show "$@" ;;
  restore)           need_ref "$@"; exec "$SPARKQ" backup-restore "$@" ;;
  restore-config)    need_ref "$@"; ref="$1"; shift; exec "$SPARKQ" backup-restore "$ref" --only yml "$@" ;;
  restore-env)       need_ref "$@"; ref="$1"; shift; exec "$SPARKQ" backup-restore "$ref" --only env "$@" ;;
  restore-templates) need_ref "$@"; ref="$1"; shift; exec "$SPARKQ" backup-restore "$ref" --only templates "$@" ;;
  export-config)     need_ref "$@"; exec "$SPARKQ" backup-export config "$@" ;;
  export-tools)      need_ref "$@"; exec "$SPARKQ" backup-export tools "$@" ;;
  export-prompts)    need_ref "$@"; exec "$SPARKQ" backup-export prompts "$@" ;;
  *)
    echo "$ME: unknown verb '$verb'; one of list, show, restore, restore-config, restore-env," \
         "restore-templates, export-config, export-tools, export-prompts (see: $ME --help)" >&2
    exit 2 ;;
esac
