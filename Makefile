# The two commands of the README are `make run` and `make test`; the rest are their parts.
SHELL := /bin/bash
CARGO ?= cargo
STACK := infra/local/stack.sh
SERVICES := infra/local/services.sh

.PHONY: run down test test-crash lint fmt bench bench-saga smoke stack stack-down build build-tests build-release ci

## run: install what is missing, start the stores and every service, run the demo workload,
## then check every invariant across the services' own stores (`shopctl check`).
## The stores come up while the workspace compiles (-j2: most of bringing them up is downloads
## and JVM start-ups; each target's output is printed when it is done).
run:
	$(MAKE) --no-print-directory -j2 --output-sync=target stack build
	$(SERVICES) up
	./target/debug/shopctl demo
	./target/debug/shopctl check

## down: stop the services and the stores this project started
down:
	-$(SERVICES) down
	$(STACK) down

## test: the whole suite (unit, integration, end to end) against the real stores (the stores
## come up while the tests compile)
test:
	$(MAKE) --no-print-directory -j2 --output-sync=target stack build-tests
	./target/debug/shopctl drop-env --prefix test --topics-only
	@rm -f target/tmp/fault-matrix.txt
	$(CARGO) test --workspace --all-targets --no-fail-fast; status=$$?; \
	  if [ -s target/tmp/fault-matrix.txt ]; then echo "fault matrix:"; cat target/tmp/fault-matrix.txt; fi; \
	  exit $$status

## test-crash: only the test that SIGKILLs the order service mid-run (it is in `make test` too).
test-crash: stack
	$(CARGO) test -p shop-order --test api -- sigkill_mid_run

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p shop-core --features otlp -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: outbox relay throughput beside the raw producer (same broker, same run; release build)
bench: stack build-release
	./target/release/shopctl bench relay

## bench-saga: whole sagas at constant open-loop offered loads beside the box's limits (issue 13),
## then the same with one hot SKU and account. Runs the services as release builds in a scratch
## environment of their own (`bench_`: its own databases, topics, index and Redis keys, dropped
## and made fresh at the start of every run, so the platform's data never mixes with it) and
## stops them at the end (`make run` brings the platform back). JSON in target/tmp/bench-saga*.json.
## Arguments: BENCH_ARGS="--rates 500,1000 --seconds 30 ...", HOT_ARGS (the hot-key run's).
HOT_ARGS ?= --rates 50,250 --seconds 30 --skip-limits
BENCH_ENV := bench_
bench-saga: stack build-release
	$(SERVICES) down
	./target/release/shopctl drop-env --prefix $(BENCH_ENV)
	mkdir -p target/tmp
	export SHOP_ENV_PREFIX=$(BENCH_ENV) SHOP_DB_PREFIX=$(BENCH_ENV) SHOP__KAFKA__TOPIC_PREFIX=$(BENCH_ENV); \
	SHOP_BIN_DIR=$(CURDIR)/target/release $(SERVICES) up && \
	./target/release/shopctl bench saga --json-out target/tmp/bench-saga.json $(BENCH_ARGS) && \
	./target/release/shopctl bench saga --hot-key --json-out target/tmp/bench-saga-hot.json $(HOT_ARGS); \
	status=$$?; $(SERVICES) down; exit $$status

## smoke: events outbox -> broker -> inbox between two scratch databases, checked
smoke: stack build
	./target/debug/shopctl smoke

stack:
	$(STACK) up

stack-down:
	$(STACK) down

build:
	$(CARGO) build --workspace --bins

build-tests:
	$(CARGO) test --workspace --all-targets --no-run

build-release:
	$(CARGO) build --release --workspace --bins

## ci: what .ci/run does
ci: lint test

## deploy-check: Dockerfile, compose file and Helm chart checked without Docker or a cluster (infra/deploy/check.sh)
.PHONY: deploy-check
deploy-check:
	infra/deploy/check.sh
