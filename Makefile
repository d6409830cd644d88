# policygate — see README.md.
#   make run    build and start the demo (sample admin API behind the gateway)
#   make test   everything CI runs: deps, vet, unit + end-to-end tests, policy tests, fuzz smoke

GO      ?= go
BIN     := bin
FUZZTIME ?= 10s

.PHONY: all build run test deps vet gotest policytest fuzz clean

all: build

build:
	$(GO) build -o $(BIN)/policygate ./cmd/policygate
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

gotest:
	POLICYGATE_REQUIRE_RABBITMQ=$$( [ "$$(id -u)" = 0 ] && echo 1 || echo 0 ) \
	  $(GO) test -count=1 -timeout 10m ./... ./testdata/sampleapi/...
	$(GO) test -count=1 -race -timeout 10m ./decision/... ./gateway/...

policytest:
	$(GO) run ./cmd/policygate test policies/

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./gateway/canon/
	$(GO) test -run '^$$' -fuzz '^FuzzProxyPath$$' -fuzztime $(FUZZTIME) ./cmd/policygate/

test: deps vet policytest gotest fuzz

clean:
	rm -rf $(BIN) .run
