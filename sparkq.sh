#!/usr/bin/env bash
# SparkQ: the one door for users. Bootstraps .venv on first use, then hands the command to the
# `sparkq` CLI inside it. Works from any current directory.
set -euo pipefail

src="$(readlink -f "${BASH_SOURCE[0]}" 2>/dev/null || echo "${BASH_SOURCE[0]}")"  # follow symlinks
HERE="$(cd -P "$(dirname "$src")" && pwd)"
VENV="$HERE/.venv"
export SPARKQ_ROOT="${SPARKQ_ROOT:-$HERE}"

usage() {
  cat <<'USAGE'
Usage: ./sparkq.sh COMMAND [ARGS]

Server
  start                      back up, then start the server in the background
  run                        back up, then run the server in the foreground (systemd)
  restart                    stop, back up, start
  stop                       stop the server (SIGTERM, then SIGKILL after the stop timeout)
  status [--json]            the state: exit 0 running, starting, backoff or unsupervised;
                             3 stopped or fatal
  logs [-f] [-n N] [--supervisor]
                             the server log's last lines (or the supervisor's events); -f follows
  setup [--reseed]           create .venv, sparkq.yml, .env and the database (safe to re-run)
  systemd-unit [--user]      print a systemd unit for this checkout

Backups
  backup                     take a backup now (also while the server runs)
  backup-list [--json]       list backups, 1 = newest
  backup-show N [--json]     manifest and files of backup N (or a bundle name)
  backup-verify [N|--all]    check checksums and database integrity
  backup-restore N [--db-only|--config-only|--tables T,..] [--yes]
                             restore backup N; the current state is kept as sparkq_preRestore_*
  backup-restore N export-prompts
                             print the prompts of backup N as JSON, restore nothing
  backup-export KIND N       print prompts|config|tools|task-classes|agent-roles|projects of N

Off-site copies (restic; an `offsite:` section in sparkq.yml)
  backup-push [N|--all]      push pending backups to the off-site repository now
  backup-list --offsite      list the SparkQ snapshots off-site
  backup-restore --offsite latest|NAME|ID [--yes]
                             fetch a bundle from off-site, verify it, restore it
  backup-verify --offsite [--read-data]
                             restic check of the off-site repository

Development
  test [PYTEST ARGS]         install test dependencies and run the test suite (--long: long faults)
  bench [--quick] [--size MB]
                             run the benchmarks (installs sqlite3 when missing)

Before COMMAND: --config FILE (another sparkq.yml; also SPARKQ_CONFIG), --debug (tracebacks),
-v (every event on stderr), --version. SPARKQ_ROOT=DIR: the project folder (default: this checkout).
Also: sparkq/scripts/restore_database.sh list|show|restore|export-config|export-tools|export-prompts N
Exit codes: 0 ok, 1 failure, 2 usage, 3 not running, 4 no such backup, 5 verification failed,
6 refused: the database is in use. Details: ./sparkq.sh COMMAND --help, README.md, docs/BACKUP.md.
USAGE
}

die() { echo "sparkq.sh: $*" >&2; exit 1; }

find_python() {
  for py in python3.13 python3.12 python3.11 python3; do
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  return 1
}

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "sparkq.sh: installing $* (apt-get)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    return 1
  fi
}

# "the checkout X belongs to user Y (you are Z)": the usual reason a .venv cannot be used.
owner_note() {
  local owner
  owner="$(stat -c %U "$HERE" 2>/dev/null || stat -f %Su "$HERE" 2>/dev/null || echo unknown)"
  echo "the checkout $HERE belongs to user $owner (you are $(id -un)): run as $owner," \
       "e.g. sudo -u $owner $0 ${cmd:-COMMAND}"
}

# ensure_venv [EXTRA]: create .venv and (re)install the project when pyproject.toml changed.
# An existing .venv that this run did not create is never deleted or rebuilt: it may belong to
# another user, or be the only working install; when it cannot be used we say why and stop.
ensure_venv() {
  local extra="${1:-}" want stamp="$VENV/.sparkq-installed"
  if [ -e "$VENV" ] || [ -L "$VENV" ]; then
    if [ -d "$VENV" ] && { [ ! -x "$VENV" ] || [ ! -r "$VENV" ]; }; then
      die "$VENV cannot be entered by you; $(owner_note)"  # e.g. another user's 0700 .venv
    elif [ -e "$VENV/bin/python" ] && [ ! -x "$VENV/bin/python" ]; then
      die "$VENV/bin/python cannot be executed by you; $(owner_note)"
    elif [ ! -x "$VENV/bin/python" ]; then
      die "$VENV has no working bin/python; if it is broken, remove it yourself (rm -rf $VENV) and run again"
    fi
  else
    local py
    py="$(find_python)" || { apt_install python3 python3-venv && py="$(find_python)"; } ||
      die "Python >= 3.11 is required; install it and run again"
    [ -w "$HERE" ] || die "cannot create $VENV: $HERE is not writable by you; $(owner_note)"
    echo "sparkq.sh: creating $VENV" >&2
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"  # only what this run just created: the branch is for a missing .venv
      apt_install python3-venv || die "cannot create a virtualenv; install python3-venv"
      "$py" -m venv "$VENV" || die "cannot create a virtualenv in $VENV"
    fi
  fi
  want="$(cat "$HERE/pyproject.toml" | cksum | cut -d' ' -f1)${extra:+[$extra]}"
  if [ ! -f "$stamp" ] || ! grep -qxF -- "$want" "$stamp"; then
    [ -w "$VENV" ] ||
      die "$VENV needs an update (pyproject.toml changed) but is not writable by you; $(owner_note)"
    echo "sparkq.sh: installing SparkQ${extra:+ with [$extra]} into .venv" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$HERE${extra:+[$extra]}" >&2 ||
      die "pip install failed; see the messages above"
    # Byte-compile our packages once: commands start faster, even where PYTHONDONTWRITEBYTECODE
    # keeps Python from writing the caches itself.
    "$VENV/bin/python" -m compileall -q "$HERE/supervisor" "$HERE/sparkq" >/dev/null 2>&1 || true
    # a test install also satisfies a plain one
    if [ -n "$extra" ]; then printf '%s\n%s\n' "$want" "${want%\[*}"; else echo "$want"; fi > "$stamp"
  fi
}

# Off-site copies use the system's restic (docs/BACKUP.md, Off-site copies). The first command
# that finds an `offsite:` section (or RESTIC_REPOSITORY) without restic installs it when it can;
# otherwise the command itself says what to install.
ensure_restic() {
  local yml="${SPARKQ_CONFIG:-$SPARKQ_ROOT/sparkq.yml}" tried="$VENV/.restic-install-tried"
  command -v restic >/dev/null 2>&1 && return 0
  [ -e "$tried" ] && return 0  # tried once already (no network?): do not run apt on every command
  if [ -n "${RESTIC_REPOSITORY:-}" ] || grep -qE '^offsite:' "$yml" 2>/dev/null; then
    [ "$(id -u)" != 0 ] || touch "$tried" 2>/dev/null || true
    apt_install restic || true
  fi
}

# The tests need restic, and rclone for a local REST backend: install them when we can, else
# the off-site tests skip and say why.
ensure_test_tools() {
  local missing=() tool
  for tool in restic rclone; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  apt_install "${missing[@]}" ||
    echo "sparkq.sh: ${missing[*]} not installed (needs root and apt-get); the off-site tests will skip" >&2
}

cmd="${1:-}"
case "$cmd" in
  ""|-h|--help|help)
    usage
    exit 0 ;;
  test)
    shift
    ensure_venv test
    ensure_test_tools
    cd "$HERE"
    exec "$VENV/bin/python" -m pytest "$@" ;;
  bench)
    shift
    ensure_venv
    command -v sqlite3 >/dev/null 2>&1 || apt_install sqlite3 ||
      die "the benchmark needs the sqlite3 command: apt install sqlite3 (or brew install sqlite3)"
    cd "$HERE"
    "$VENV/bin/python" -m compileall -q supervisor sparkq bench >/dev/null 2>&1 || true  # time code, not compiles
    exec "$VENV/bin/python" -m bench "$@" ;;
  *)
    ensure_venv
    ensure_restic
    exec "$VENV/bin/sparkq" "$@" ;;
esac
