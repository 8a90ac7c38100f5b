# Sourced by scripts that need a throwaway PostgreSQL (Debian's package):
# `postgres_throwaway_start` runs initdb in a temporary directory and starts
# the server on a free loopback port, as the `postgres` user when this is
# root (PostgreSQL refuses root); it sets POSTGRES_THROWAWAY_URL and stops
# and removes the server when the script exits.
postgres_throwaway_start() {
  local bin port
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  POSTGRES_THROWAWAY_DIR=$(mktemp -d)
  POSTGRES_THROWAWAY_AS=()
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres:postgres "$POSTGRES_THROWAWAY_DIR"
    POSTGRES_THROWAWAY_AS=(setpriv --reuid=postgres --regid=postgres --clear-groups --)
  fi
  "${POSTGRES_THROWAWAY_AS[@]}" "$bin/initdb" -D "$POSTGRES_THROWAWAY_DIR/data" -U postgres --auth=trust \
    --no-sync -E UTF8 --locale=C >/dev/null
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  POSTGRES_THROWAWAY_PG_CTL="$bin/pg_ctl"
  trap postgres_throwaway_stop EXIT
  "${POSTGRES_THROWAWAY_AS[@]}" "$bin/pg_ctl" -D "$POSTGRES_THROWAWAY_DIR/data" -l "$POSTGRES_THROWAWAY_DIR/server.log" \
    -w -o "-p $port -k $POSTGRES_THROWAWAY_DIR -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
  POSTGRES_THROWAWAY_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

postgres_throwaway_stop() {
  "${POSTGRES_THROWAWAY_AS[@]}" "$POSTGRES_THROWAWAY_PG_CTL" -D "$POSTGRES_THROWAWAY_DIR/data" -m immediate stop \
    >/dev/null 2>&1 || true
  rm -rf "$POSTGRES_THROWAWAY_DIR"
}
