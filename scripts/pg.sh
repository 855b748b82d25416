#!/usr/bin/env bash
# PostgreSQL for tests and CI, from Debian's `postgresql` package: a throwaway cluster in a temp directory.
#
#   scripts/pg.sh setup                     # install Debian's postgresql when initdb is missing
#   scripts/pg.sh start [--owner-pid PID]   # initdb a cluster, start it on a free loopback port; prints two
#                                           # lines: its URL (postgres://postgres@127.0.0.1:PORT/postgres), its DIR
#   scripts/pg.sh restart DIR               # restart that cluster (fast shutdown: sessions are cut) on the
#                                           # same port, with the same settings; waits until it accepts again
#   scripts/pg.sh stop DIR                  # stop that cluster and remove DIR
#
# With --owner-pid, a watcher stops the cluster and removes DIR once process PID has exited (the test process
# that started it), so a test run leaves no server behind. PostgreSQL refuses to run as root: as root the
# cluster belongs to the `postgres` user (which the package creates) and runs as that user. The cluster trusts
# loopback connections and does not fsync: it is for tests, nothing else.
set -euo pipefail

log() { echo "pg.sh: $*" >&2; }

apt_install() {
  log "installing $* (Debian packages)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
  else sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2; fi
}

# Debian keeps the server's programs off PATH, under /usr/lib/postgresql/VERSION/bin: the newest one.
bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/initdb" ] || { log "no PostgreSQL server found (run scripts/pg.sh setup)"; return 1; }
  echo "$dir"
}

# Runs a server program as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

setup() {
  bindir >/dev/null 2>&1 || apt_install postgresql
  bindir >/dev/null
}

start() {
  local owner=""
  if [ "${1:-}" = --owner-pid ]; then owner=$2; fi
  local bin dir port url
  bin=$(bindir)
  dir=$(mktemp -d "${TMPDIR:-/tmp}/inflight-pg.XXXXXX")
  chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; return 1; }
  # A free port can be taken between the look and the bind: try a few.
  for _ in 1 2 3; do
    port=$(free_port)
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o \
        "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null 2>&1; then
      url="postgres://postgres@127.0.0.1:$port/postgres"
      if [ -n "$owner" ]; then
        # Detached, with no descriptor of ours, so that whoever reads our output sees its end now.
        setsid bash -c "while kill -0 $owner 2>/dev/null; do sleep 1; done; '$0' stop '$dir'" \
          </dev/null >/dev/null 2>&1 &
      fi
      echo "$url"
      echo "$dir"
      return 0
    fi
  done
  tail -n 20 "$dir/server.log" >&2 || true
  rm -rf "$dir"
  log "the cluster did not start"
  return 1
}

# pg_ctl restart starts the server again with the options it was started with (kept in postmaster.opts): the
# same port, socket directory and settings.
restart() {
  local dir=${1:?usage: pg.sh restart DIR}
  [ -d "$dir/data" ] || { log "no cluster in $dir"; return 1; }
  as_owner "$(bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart >/dev/null 2>&1 \
    || { tail -n 20 "$dir/server.log" >&2 || true; log "the cluster did not restart"; return 1; }
}

stop() {
  local dir=${1:?usage: pg.sh stop DIR}
  [ -d "$dir/data" ] || { log "no cluster in $dir"; return 1; }
  as_owner "$(bindir)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

cmd=${1:-}
shift || true
case "$cmd" in
  setup) setup ;;
  start) start "$@" ;;
  restart) restart "$@" ;;
  stop) stop "$@" ;;
  *) echo "usage: scripts/pg.sh setup | start [--owner-pid PID] | restart DIR | stop DIR" >&2; exit 2 ;;
esac
