#!/usr/bin/env bash
# Starts the demo: the sample NHI admin API on loopback, policygate in front
# of it with the shipped policies, and prints calls to try. Ctrl-C stops
# both. Ports: GATEWAY_PORT (8080), API_PORT (9091), ADMIN_PORT (9180).
set -euo pipefail
cd "$(dirname "$0")/../.."

GATEWAY_PORT=${GATEWAY_PORT:-8080}
API_PORT=${API_PORT:-9091}
ADMIN_PORT=${ADMIN_PORT:-9180}
RUN=.run
mkdir -p "$RUN"
if ! command -v curl >/dev/null 2>&1; then
	echo "the demo's readiness check and suggested calls use curl: apt-get install -y curl" >&2
	exit 1
fi

for port in "$GATEWAY_PORT" "$API_PORT" "$ADMIN_PORT"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "port $port on 127.0.0.1 is in use; choose others, e.g. GATEWAY_PORT=18080 API_PORT=19091 ADMIN_PORT=19180 make run" >&2
		exit 1
	fi
done

# Demo credentials. Only their SHA-256 hashes go into the configuration.
ADMIN_KEY=demo-admin-key
LEAD_KEY=demo-lead-key
CI_KEY=demo-ci-key
AUDITOR_KEY=demo-auditor-key
BACKEND_TOKEN=demo-backend-token-$RANDOM$RANDOM

hash() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
sed -e "s/@GATEWAY_PORT@/$GATEWAY_PORT/; s/@API_PORT@/$API_PORT/; s/@ADMIN_PORT@/$ADMIN_PORT/" \
	-e "s/@HASH_ADMIN@/$(hash $ADMIN_KEY)/; s/@HASH_LEAD@/$(hash $LEAD_KEY)/" \
	-e "s/@HASH_CI@/$(hash $CI_KEY)/; s/@HASH_AUDITOR@/$(hash $AUDITOR_KEY)/" \
	testdata/demo/policygate.yaml.tmpl >"$RUN/policygate.yaml"

SAMPLEAPI_TOKEN=$BACKEND_TOKEN bin/policygate check --config "$RUN/policygate.yaml"

pids=()
stopping=
cleanup() {
	trap - INT TERM EXIT
	stopping=1
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	echo "demo stopped; decision log kept in $RUN/decisions.jsonl (appended to on the next run)"
}
trap cleanup INT TERM EXIT

SAMPLEAPI_REQUIRE_AUTH="Bearer $BACKEND_TOKEN" bin/sampleapi -addr "127.0.0.1:$API_PORT" >"$RUN/sampleapi.log" 2>&1 &
pids+=($!)
SAMPLEAPI_TOKEN=$BACKEND_TOKEN bin/policygate run --config "$RUN/policygate.yaml" 2>"$RUN/policygate.log" &
pids+=($!)

for _ in $(seq 1 100); do
	if curl -fsS "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null 2>&1; then break; fi
	sleep 0.1
done
if ! curl -fsS "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null 2>&1; then
	echo "gateway did not become ready; see $RUN/policygate.log:" >&2
	cat "$RUN/policygate.log" >&2
	exit 1
fi

G=http://127.0.0.1:$GATEWAY_PORT
cat <<MSG

policygate demo is running
  gateway      $G   (policy: policies/sampleapi, route: sampleapi)
  sample API   http://127.0.0.1:$API_PORT   (only accepts the gateway's brokered token)
  admin        http://127.0.0.1:$ADMIN_PORT/ready
  decision log $RUN/decisions.jsonl   gateway log $RUN/policygate.log

Demo API keys: alice=$ADMIN_KEY (platform-admin), payments-lead=$LEAD_KEY (team-lead, team payments),
               payments-ci=$CI_KEY (ci, team payments), auditor=$AUDITOR_KEY (auditor)

Try (in another terminal):

  # allowed: the auditor reads every service account
  curl -i -H 'Authorization: Bearer $AUDITOR_KEY' $G/v1/service-accounts

  # allowed: CI mints a key that expires within a day for its own team's account
  curl -i -H 'X-Api-Key: $CI_KEY' -H 'Content-Type: application/json' \\
       -d '{"ttl_seconds": 3600}' $G/v1/service-accounts/payments.deployer/keys

  # denied 403: CI may not mint a key without a short TTL, nor touch another team
  curl -i -H 'X-Api-Key: $CI_KEY' -H 'Content-Type: application/json' \\
       -d '{"ttl_seconds": 604800}' $G/v1/service-accounts/payments.deployer/keys
  curl -i -H 'X-Api-Key: $CI_KEY' -X POST $G/v1/service-accounts/billing.exporter/suspend

  # allowed: the payments team lead suspends a payments account; denied: deleting billing's
  curl -i -u payments-lead:$LEAD_KEY -X POST $G/v1/service-accounts/payments.deployer/suspend
  curl -i -u payments-lead:$LEAD_KEY -X DELETE $G/v1/service-accounts/billing.exporter

  # unauthenticated: 401; a bad key: 401; an ambiguous path: 400
  curl -i $G/v1/service-accounts
  curl -i -H 'X-Api-Key: wrong' $G/v1/service-accounts
  curl -i --path-as-is '$G/v1/../v1/service-accounts'

  # the backend refuses callers that bypass the gateway: 401
  curl -i http://127.0.0.1:$API_PORT/v1/service-accounts

  # every decision, with credentials erased
  tail -n 3 $RUN/decisions.jsonl

Press Ctrl-C to stop.
MSG

wait -n "${pids[@]}" || true
if [ -z "$stopping" ]; then
	echo "a demo process exited on its own; see $RUN/policygate.log and $RUN/sampleapi.log" >&2
	exit 1
fi
