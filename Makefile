# Switchboard. The two commands a fresh machine needs: `make demo` and `make test`.
# Everything else they need beyond the Rust toolchain is installed from here.

# Recipes use bash: the broker check reads /dev/tcp.
SHELL := /bin/bash

# One target directory for the host and both wasm workspaces, so shared crates build once.
# CI points this at a cache outside the clone.
CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR

WASM_OUT := $(CARGO_TARGET_DIR)/wasm32-wasip2/release
BIN := $(CARGO_TARGET_DIR)/release
PLUGINS := fcm apns alimtalk-nhn sms-twilio sms-nhn
GUESTS := misbehave missing_deliver extra_import flaky_fcm
MESSAGES ?= 20000
# A Redis of the project's own, on loopback, for the Redis dedup tests.
REDIS_PORT ?= 6390
export SWITCHBOARD_TEST_REDIS ?= redis://127.0.0.1:$(REDIS_PORT)
# A PostgreSQL cluster of the project's own, on loopback and off the default port, for the
# send-history tests. Its directory is under /tmp: the postgres user must own it, and cannot
# reach into root's home.
POSTGRES_PORT ?= 5440
POSTGRES_DIR ?= /tmp/switchboard-postgres
POSTGRES_TEST_DB ?= switchboard_test
POSTGRES_TEST_USER ?= switchboard
POSTGRES_TEST_PASSWORD ?= switchboard
export SWITCHBOARD_TEST_POSTGRES ?= postgres://$(POSTGRES_TEST_USER):$(POSTGRES_TEST_PASSWORD)@127.0.0.1:$(POSTGRES_PORT)/$(POSTGRES_TEST_DB)
# A real Kafka-protocol broker for the tests and the lab: nisshi (the successor of Tansu), built
# once with cargo into a cache outside the clone, as the target directory is, and run on
# loopback with sqlite storage. It needs a newer rustc than the project's pinned one, so it
# builds with a toolchain of its own.
BROKER_VERSION ?= 0.8.1
BROKER_TOOLCHAIN ?= 1.96.0
TOOLS_DIR ?= $(HOME)/.cache/switchboard-tools
BROKER := $(TOOLS_DIR)/bin/nisshi
BROKER_PORT ?= 19092
BROKER_DIR ?= /tmp/switchboard-broker
export SWITCHBOARD_TEST_KAFKA ?= 127.0.0.1:$(BROKER_PORT)
# Tests that kill and restart a broker start one of their own from this binary.
export SWITCHBOARD_TEST_BROKER_BIN ?= $(BROKER)

.PHONY: demo test example example-ts example-ts-build sdk-ts plugins guests guests-ts host lint fmt bench toolchain sysdeps node services broker browser clean-build

## demo: build everything and run the demo on embedded defaults (prints one JSON line last)
demo: plugins host
	$(BIN)/switchboard demo --messages $(MESSAGES)

## test: unit, integration and end-to-end tests (release profile, the one the lab measures)
test: sysdeps plugins guests guests-ts example-ts-build services browser
	cargo test --release --workspace --all-targets --no-fail-fast
	cargo test --release --doc -p switchboard-sdk
	$(MAKE) example example-ts

## example: build examples/hello-vendor, check it, and run its offline tests
example: toolchain
	cd examples/hello-vendor && cargo build --release
	$(BIN)/switchboard plugin check $(WASM_OUT)/hello_vendor.wasm
	cd examples/hello-vendor && $(BIN)/switchboard plugin test $(WASM_OUT)/hello_vendor.wasm --cases tests/cases.yaml

## sdk-ts: the TypeScript SDK's tools (jco, TypeScript) from npm; checks that it ships the Rust
## SDK's WIT, that its types are what jco generates from it, and that it type-checks
# The npm cache is kept in $(HOME)/.npm, so a second install downloads nothing.
NPM := npm --no-fund --no-audit --loglevel=error
JCO := $(CURDIR)/sdk-ts/node_modules/.bin/jco
sdk-ts: node
	cd sdk-ts && $(NPM) install
	cmp sdk/wit/switchboard.wit sdk-ts/wit/switchboard.wit || { echo "sdk-ts/wit differs from sdk/wit: copy it over"; exit 1; }
	rm -rf $(CARGO_TARGET_DIR)/sdk-ts-types && cd sdk-ts && $(JCO) guest-types wit -n adapter -o $(CARGO_TARGET_DIR)/sdk-ts-types >/dev/null
	diff -r sdk-ts/types $(CARGO_TARGET_DIR)/sdk-ts-types || { echo "sdk-ts/types is stale: cd sdk-ts && npm run types"; exit 1; }
	cd sdk-ts && npx tsc --noEmit -p .

## example-ts: build examples/twilio-ts (TypeScript), check it, and run its offline tests
# Built before `cargo test` too: the end-to-end test delivers through it.
example-ts-build: sdk-ts
	cd examples/twilio-ts && $(NPM) install && npm run build --silent
example-ts: example-ts-build
	$(BIN)/switchboard plugin check examples/twilio-ts/dist/sms_twilio_ts.wasm
	cd examples/twilio-ts && $(BIN)/switchboard plugin test dist/sms_twilio_ts.wasm --cases tests/cases.yaml

## guests-ts: the hostile TypeScript test guest, into build/guests/
guests-ts: build/guests/hostile_ts.wasm
build/guests/hostile_ts.wasm: tests/guests-ts/hostile.ts $(wildcard sdk-ts/src/*.ts) | sdk-ts
	mkdir -p build/guests
	cd sdk-ts && $(JCO) componentize ../tests/guests-ts/hostile.ts --wit wit --world-name adapter \
	  --bundle-config bundle.config.js --disable stdio http fetch-event --out ../$@ >/dev/null

## node: Node.js and npm, for the TypeScript SDK (on the machine already, or from Debian's packages)
node:
	@command -v npm >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	@node --version

## plugins: the bundled vendor adapters as wasm32-wasip2 components, into build/plugins/
plugins: toolchain
	cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
	mkdir -p build/plugins
	for p in $(PLUGINS); do cp $(WASM_OUT)/$$(echo $$p | tr - _).wasm build/plugins/$$p.wasm; done

## guests: the misbehaving test components, into build/guests/
# A target directory of their own: flaky_fcm links the FCM adapter's rlib without its exports,
# and a cdylib crate's rlib has no hash in its file name, so sharing the plugins' directory would
# let each build overwrite the other's `libfcm.rlib`. One per checkout, for the same reason: a
# cache shared by two checkouts once had the guests link an FCM rlib built in the other against
# its own SDK ("multiple different versions of crate `switchboard_sdk`").
GUESTS_TARGET := $(CARGO_TARGET_DIR)/guests-$(shell printf %s "$(CURDIR)" | cksum | cut -d' ' -f1)
guests: toolchain
	cargo build --release --target wasm32-wasip2 --manifest-path tests/guests/Cargo.toml --target-dir $(GUESTS_TARGET)
	mkdir -p build/guests
	for g in $(GUESTS); do cp $(GUESTS_TARGET)/wasm32-wasip2/release/$$g.wasm build/guests/; done

## host: the host, the lab and the simulators (release)
# Every target, tests included: the test targets' dev-dependencies turn on features of crates
# the binaries share (syn and what derives with it, up to wasmtime and librdkafka), so building
# the binaries alone made `make test` rebuild 109 crates afterwards on a fresh machine. Built
# this way, `make test` compiles nothing more.
host: sysdeps
	cargo build --release --workspace --all-targets

## lint: formatting and clippy for the host workspace and the plugin workspaces
lint: toolchain sysdeps
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	cd plugins && cargo fmt --all -- --check
	cd plugins && cargo clippy --release --target wasm32-wasip2 -- -D warnings
	cd tests/guests && cargo fmt --all -- --check
	cd examples/hello-vendor && cargo fmt --all -- --check && cargo clippy --release -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --release -p switchboard-sdk --no-deps

fmt:
	cargo fmt --all
	cd plugins && cargo fmt --all
	cd tests/guests && cargo fmt --all

## bench: the lab's runtime scenario (per-call cost of the sandbox)
bench: guests host
	$(BIN)/switchboard-lab runtime --guest build/guests/misbehave.wasm

## broker: build the Kafka-protocol broker once into $(TOOLS_DIR) (about 25 minutes cold)
broker: $(BROKER)
$(BROKER):
	@rustup toolchain list | grep -q '^$(BROKER_TOOLCHAIN)' || rustup toolchain install $(BROKER_TOOLCHAIN) --profile minimal
	CARGO_TARGET_DIR=$(TOOLS_DIR)/target cargo +$(BROKER_TOOLCHAIN) install nisshi --version $(BROKER_VERSION) --locked --root $(TOOLS_DIR)
	@# The build tree is only needed to build; the binary stays.
	rm -rf $(TOOLS_DIR)/target

## services: install (from Debian's packages) and start the servers the tests use, on loopback
services: broker
	@# The broker: sqlite storage under $(BROKER_DIR), so its data outlives a broker restart.
	@set -e; mkdir -p $(BROKER_DIR); \
	if ! (exec 3<>/dev/tcp/127.0.0.1/$(BROKER_PORT)) 2>/dev/null; then \
	  cd $(BROKER_DIR); setsid --fork $(BROKER) broker --storage-engine sqlite://broker.db \
	    --listener-url tcp://127.0.0.1:$(BROKER_PORT) --advertised-listener-url tcp://127.0.0.1:$(BROKER_PORT) \
	    > $(BROKER_DIR)/broker.log 2>&1 < /dev/null; \
	  for i in $$(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$(BROKER_PORT)) 2>/dev/null && break; sleep 0.2; done; \
	fi; \
	(exec 3<>/dev/tcp/127.0.0.1/$(BROKER_PORT)) 2>/dev/null || { cat $(BROKER_DIR)/broker.log; exit 1; }; \
	echo "broker on 127.0.0.1:$(BROKER_PORT)"
	@command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1 || redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --daemonize yes --save '' --appendonly no --dir /tmp
	@redis-cli -p $(REDIS_PORT) ping
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	@# Each step runs only when needed (no cluster, not running, no role, no database), so a second
	@# run changes nothing. The server binaries are not on PATH on Debian: take the newest version's
	@# (a client-only install has psql there but no initdb).
	@set -e; cd /tmp; \
	pg_bin=$$(dirname $$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)); \
	as_postgres="runuser -u postgres --"; \
	if [ ! -f $(POSTGRES_DIR)/PG_VERSION ]; then \
	  install -d -o postgres -g postgres -m 700 $(POSTGRES_DIR); \
	  $$as_postgres $$pg_bin/initdb -D $(POSTGRES_DIR) -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null; \
	fi; \
	if ! $$as_postgres $$pg_bin/pg_ctl -D $(POSTGRES_DIR) status >/dev/null 2>&1; then \
	  $$as_postgres $$pg_bin/pg_ctl -D $(POSTGRES_DIR) -l $(POSTGRES_DIR)/server.log -w \
	    -o "-p $(POSTGRES_PORT) -c listen_addresses=127.0.0.1 -k $(POSTGRES_DIR)" start >/dev/null; \
	fi; \
	psql="$$as_postgres $$pg_bin/psql -h $(POSTGRES_DIR) -p $(POSTGRES_PORT) -U postgres -d postgres -v ON_ERROR_STOP=1 -qtAc"; \
	$$psql "SELECT 1 FROM pg_roles WHERE rolname = '$(POSTGRES_TEST_USER)'" | grep -q 1 || \
	  $$psql "CREATE ROLE $(POSTGRES_TEST_USER) LOGIN PASSWORD '$(POSTGRES_TEST_PASSWORD)'"; \
	$$psql "SELECT 1 FROM pg_database WHERE datname = '$(POSTGRES_TEST_DB)'" | grep -q 1 || \
	  $$psql "CREATE DATABASE $(POSTGRES_TEST_DB) OWNER $(POSTGRES_TEST_USER)"; \
	$$pg_bin/pg_isready -h 127.0.0.1 -p $(POSTGRES_PORT)

## browser: install (from Debian's packages) headless Chromium and chromedriver, which the web
## console's test drives
browser:
	@test -x /usr/bin/chromedriver || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
	@/usr/bin/chromedriver --version

## sysdeps: the C libraries librdkafka links (OpenSSL for TLS and SASL), from Debian's packages
sysdeps:
	@{ test -f /usr/include/openssl/ssl.h && command -v pkg-config >/dev/null; } || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config >/dev/null; }

toolchain:
	@rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip2$$' || rustup target add wasm32-wasip2

clean-build:
	rm -rf build
