#!/usr/bin/env bash
# Runs one fault scenario in the compose environment and prints the loadgen's verdict:
#
#   docker/fault.sh restart     # the server container killed (SIGKILL) and started again
#   docker/fault.sh partition   # the loadgen cut off the network and reconnected
#   docker/fault.sh memory      # the load itself pushes the server against its memory limit
#
# The loadgen runs `vecrig-loadgen fault --kind KIND` (a paced load of searches and stamped
# writes, every acknowledged write read back at the end) while this script injects the fault
# from outside with docker commands. Exit code: the loadgen's (0 = the verdict passed).
#
# Variables: VECRIG_DURATION (load, default 40s), FAULT_AFTER (seconds before the fault, 10),
# FAULT_FOR (seconds the fault lasts, 5), FAULT_FLAGS (more `fault` flags, e.g.
# "--rate 500 --recover-within 5s"), plus compose.yaml's (VECRIG_SERVER_MEMORY, ...).
# The report is in $VECRIG_REPORTS/fault-KIND/shard-0.json (VECRIG_RUN overrides the folder).
# Compose's own COMPOSE_PROJECT_NAME picks the environment. The server is started if needed
# and left running.
set -euo pipefail
cd "$(dirname "$0")/.."

kind=${1:-}
case "$kind" in
  restart|partition|memory|none) ;;
  *) echo "usage: $0 restart|partition|memory|none" >&2; exit 2 ;;
esac
after=${FAULT_AFTER:-10}
lasts=${FAULT_FOR:-5}
export VECRIG_RUN=${VECRIG_RUN:-fault-$kind}
export VECRIG_SHARDS=1
export VECRIG_COMMAND="fault --kind $kind --duration ${VECRIG_DURATION:-40s} ${FAULT_FLAGS:-}"

if docker compose version >/dev/null 2>&1; then
  compose() { docker compose "$@"; }
else
  compose() { docker-compose "$@"; }
fi

# `up` waits for the server's health check (depends_on: service_healthy) before the loadgen;
# one loadgen, even if an earlier run scaled it up.
compose up -d --scale loadgen=1 loadgen
server=$(compose ps -q server)
loadgen=$(compose ps -q loadgen)

sleep "$after"
case "$kind" in
  restart)
    echo "fault: docker kill -s KILL (server), ${lasts}s down, docker start"
    docker kill -s KILL "$server" >/dev/null
    sleep "$lasts"
    docker start "$server" >/dev/null
    ;;
  partition)
    network=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}' "$loadgen" | awk '{print $1}')
    echo "fault: docker network disconnect $network (loadgen), ${lasts}s cut, connect"
    docker network disconnect "$network" "$loadgen"
    sleep "$lasts"
    docker network connect "$network" "$loadgen"
    ;;
  memory)
    echo "fault: none injected; the load fills the server's memory (limit ${VECRIG_SERVER_MEMORY:-1g})"
    ;;
  none) ;;
esac

code=$(docker wait "$loadgen")
compose logs --no-color loadgen | sed -n '/== fault/,$p'
echo "server: restarts $(docker inspect -f '{{.RestartCount}}' "$server"), OOM-killed $(docker inspect -f '{{.State.OOMKilled}}' "$server")"
exit "$code"
