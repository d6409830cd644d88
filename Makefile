# policygate — see README.md.
#   make run    build and start the demo (sample admin API behind the gateway)
#   make test   everything CI runs: deps, vet, unit + end-to-end tests, policy tests, fuzz smoke
#   make bench  throughput and latency vs a plain proxy and an OPA sidecar (not part of test)

GO      ?= go
BIN     := bin
FUZZTIME ?= 10s
COMMIT  := $(shell git rev-parse --short HEAD 2>/dev/null)

.PHONY: all build run test deps vet gotest policytest fuzz bench clean

all: build

build:
	$(GO) build -ldflags "-X main.commit=$(COMMIT)" -o $(BIN)/policygate ./cmd/policygate
	$(GO) build -o $(BIN)/sampleapi ./testdata/sampleapi/cmd/sampleapi

run: build
	@testdata/demo/run.sh

# deps installs the system packages the tests need (RabbitMQ with
# rabbitmqadmin, Redis) when they are missing. It needs root; without root
# it only reports what is missing and the RabbitMQ test skips.
deps:
	@if [ "$$(id -u)" = 0 ]; then .ci/install-deps; \
	elif [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then \
	  echo "deps: rabbitmq-server missing and not root: run 'sudo .ci/install-deps' (the RabbitMQ test will skip)"; fi

vet:
	$(GO) vet ./... ./testdata/sampleapi/...
	@unformatted="$$(gofmt -l cmd decision gateway bundles xds testdata)"; \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi

# As root (CI) the system dependencies were installed by deps, so tests that
# need them fail instead of skipping when they are missing.
REQUIRE := $(shell [ "$$(id -u)" = 0 ] && echo 1 || echo 0)

gotest:
	POLICYGATE_REQUIRE_RABBITMQ=$(REQUIRE) POLICYGATE_REQUIRE_REDIS=$(REQUIRE) POLICYGATE_REQUIRE_NGINX=$(REQUIRE) \
	  $(GO) test -count=1 -timeout 10m ./... ./testdata/sampleapi/...
	$(GO) test -count=1 -race -timeout 10m ./decision/... ./gateway/...

policytest:
	$(GO) run ./cmd/policygate test policies/

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./gateway/canon/
	$(GO) test -run '^$$' -fuzz '^FuzzProxyPath$$' -fuzztime $(FUZZTIME) ./cmd/policygate/

test: deps vet policytest gotest fuzz

# bench runs testdata/bench/cmd/bench (README, Benchmarks): wrk on loopback
# against a plain proxy, policygate and an OPA sidecar; about five minutes
# with the defaults (BENCH_DURATION, BENCH_REPS, BENCH_CONNS, ...). wrk is
# installed from Debian when missing and run as root.
bench:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null || \
	    { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null; }; \
	  else echo "bench: wrk missing: run 'sudo apt-get install -y wrk'"; exit 1; fi; }
	GO=$(GO) $(GO) run ./testdata/bench/cmd/bench

clean:
	rm -rf $(BIN) .run
