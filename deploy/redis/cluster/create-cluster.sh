#!/bin/sh
# create-cluster.sh -- join the Redis Cluster's nodes into one cluster, once.
#
# Run by the Job redis-cluster-create (deploy/k8s/overlays/production-redis-cluster) in the
# redis:7-alpine image, so POSIX sh and redis-cli only. tests/deploy/test_redis_cluster.py
# runs it against six local redis-servers. Idempotent: when the first node already knows
# other nodes, the cluster exists and nothing is changed; a rerun only waits for it.
#
#   NODES      host:port of every node, space-separated (required)
#   REPLICAS   replicas per master (default 1: six nodes make three masters)
#   WAIT_SECS  how long to wait for the nodes, then for cluster_state:ok (default 300)
#
# CLUSTER MEET takes addresses, not names: each host is resolved here (getent) first.
set -eu

: "${NODES:?set NODES to the host:port of every node}"
REPLICAS=${REPLICAS:-1}
WAIT_SECS=${WAIT_SECS:-300}
deadline=$(($(date +%s) + WAIT_SECS))

say() { echo "create-cluster: $*"; }
fail() {
  echo "create-cluster: $*" >&2
  exit 1
}
cli() {
  node=$1
  shift
  redis-cli -h "${node%:*}" -p "${node##*:}" "$@"
}
info_field() { # node field: one field of CLUSTER INFO
  cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}
wait_until_deadline() { # what
  [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${WAIT_SECS}s waiting for $1"
  sleep 1
}

count=0
for node in $NODES; do
  count=$((count + 1))
  until [ "$(cli "$node" ping 2>/dev/null)" = "PONG" ]; do wait_until_deadline "$node to answer PING"; done
  [ "$(info_field "$node" cluster_enabled)" != "0" ] || fail "$node is not in cluster mode (cluster-enabled yes)"
done
[ "$count" -ge $((3 * (REPLICAS + 1))) ] || fail "$count nodes cannot make 3 masters with $REPLICAS replicas each"

first=${NODES%% *}
known=$(info_field "$first" cluster_known_nodes)
if [ "${known:-1}" -gt 1 ]; then
  say "$first already knows $known nodes: the cluster exists, nothing to create"
else
  addresses=""
  for node in $NODES; do
    ip=$(getent hosts "${node%:*}" | awk 'NR == 1 { print $1 }')
    [ -n "$ip" ] || fail "cannot resolve ${node%:*}"
    addresses="$addresses $ip:${node##*:}"
  done
  say "creating a cluster of$addresses with $REPLICAS replica(s) per master"
  # shellcheck disable=SC2086  # one argument per address
  redis-cli --cluster create $addresses --cluster-replicas "$REPLICAS" --cluster-yes
fi

for node in $NODES; do
  until [ "$(info_field "$node" cluster_state)" = "ok" ]; do wait_until_deadline "cluster_state:ok on $node"; done
done
replicas=$((count - count / (REPLICAS + 1)))
until [ "$(cli "$first" cluster nodes 2>/dev/null | grep -c slave)" -ge "$replicas" ]; do
  wait_until_deadline "$replicas replicas to follow their masters"
done
say "cluster_state:ok on all $count nodes, $replicas of them replicas"
