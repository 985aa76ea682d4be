#!/usr/bin/env bash
# adpulse's topics on a real Kafka cluster (CONTRACT.md §1; streams/topics.py is the source of truth).
# The init step of docker-compose.yml runs it; idempotent. A topic that exists with another partition count
# is an error, never changed here: see docs/operations.md, "Partitions and workers".
set -euo pipefail

KAFKA_TOPICS=${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}
BOOTSTRAP=${KAFKA_BOOTSTRAP:-kafka:9092}
PREFIX=${ADPULSE_TOPIC_PREFIX:-adpulse.}
PARTITIONS=${ADPULSE_PARTITIONS:-4}
REPLICATION=${KAFKA_REPLICATION_FACTOR:-1}
RETENTION_MS=${TOPIC_RETENTION_MS:-604800000}
# Client settings for a secured cluster (SASL/TLS): a properties file, see docs/operations.md.
client=()
if [ -n "${KAFKA_CLIENT_CONFIG:-}" ]; then
  client=(--command-config "$KAFKA_CLIENT_CONFIG")
fi

topics() {
  "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" "${client[@]}" "$@"
}

create() {  # short-name partitions config...
  local name=$PREFIX$1 partitions=$2 have
  shift 2
  local configs=()
  for config in "$@"; do
    configs+=(--config "$config")
  done
  topics --create --if-not-exists --topic "$name" --partitions "$partitions" \
    --replication-factor "$REPLICATION" "${configs[@]}"
  have=$(topics --describe --topic "$name" | sed -n 's/.*PartitionCount:[[:space:]]*\([0-9][0-9]*\).*/\1/p' | head -n 1)
  if [ "$have" != "$partitions" ]; then
    echo "create-topics: $name has ${have:-no} partitions, adpulse is configured for $partitions" \
      "(ADPULSE_PARTITIONS); see docs/operations.md, \"Partitions and workers\"" >&2
    exit 1
  fi
  echo "create-topics: $name ready ($partitions partitions)"
}

for short in clicks orders spend dlq partials; do
  create "$short" "$PARTITIONS" cleanup.policy=delete "retention.ms=$RETENTION_MS"
done
# Budget settings: compacted, the last value per key wins; one partition keeps them in order.
create budgets 1 cleanup.policy=compact
