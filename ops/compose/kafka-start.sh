#!/bin/sh
# One KRaft node of docker-compose.yml with SASL/SCRAM and ACLs, as stack/kafka.py
# configures the native one: every principal's SCRAM credential is added when the log
# dir is formatted (first start only), the brokers log in to each other as `broker`
# (SCRAM on CLIENT, PLAIN on CONTROLLER), `broker` and `admin` are super users and the
# services' ACLs are created by the init container (`python -m stack acls`).
set -eu
: "${KAFKA_NODE_ID:?}" "${KAFKA_BROKER_PASSWORD:?}" "${KAFKA_ADMIN_PASSWORD:?}"
: "${KAFKA_PROCESSOR_PASSWORD:?}" "${KAFKA_PROJECTOR_PASSWORD:?}"
: "${KAFKA_NOTIFIER_PASSWORD:?}" "${KAFKA_COMMAND_API_PASSWORD:?}"
props=/tmp/server.properties
umask 077
cat > "$props" <<PROPS
process.roles=broker,controller
node.id=${KAFKA_NODE_ID}
listeners=CLIENT://:9092,CONTROLLER://:9093
advertised.listeners=CLIENT://kafka-${KAFKA_NODE_ID}:9092
inter.broker.listener.name=CLIENT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="${KAFKA_BROKER_PASSWORD}";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="broker" password="${KAFKA_BROKER_PASSWORD}" user_broker="${KAFKA_BROKER_PASSWORD}";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:broker;User:admin
allow.everyone.if.no.acl.found=false
controller.quorum.voters=1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093
log.dirs=/var/lib/kafka/data
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1500
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
if [ ! -f /var/lib/kafka/data/meta.properties ]; then
  /opt/kafka/bin/kafka-storage.sh format --cluster-id="${CLUSTER_ID}" -c "$props" \
    --add-scram "SCRAM-SHA-512=[name=broker,password=${KAFKA_BROKER_PASSWORD}]" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=${KAFKA_ADMIN_PASSWORD}]" \
    --add-scram "SCRAM-SHA-512=[name=processor,password=${KAFKA_PROCESSOR_PASSWORD}]" \
    --add-scram "SCRAM-SHA-512=[name=projector,password=${KAFKA_PROJECTOR_PASSWORD}]" \
    --add-scram "SCRAM-SHA-512=[name=notifier,password=${KAFKA_NOTIFIER_PASSWORD}]" \
    --add-scram "SCRAM-SHA-512=[name=command-api,password=${KAFKA_COMMAND_API_PASSWORD}]"
fi
# The operator's client configuration, for the healthcheck and `docker compose exec`.
cat > /tmp/admin.properties <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${KAFKA_ADMIN_PASSWORD}";
PROPS
exec /opt/kafka/bin/kafka-server-start.sh "$props"
