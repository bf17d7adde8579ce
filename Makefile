# sidewall: `make run` and `make test` work on a fresh Debian machine (as root): they install
# their own prerequisites first (scripts/setup.sh, idempotent and quick once done).

CARGO ?= cargo
SOCKET ?= /run/sidewall/sidewall.sock
TEST_THREADS ?= 2

.PHONY: all setup build release run test unit integration lint fmt clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --workspace --all-targets

release: setup
	$(CARGO) build --release --workspace

## Start the daemon on this host with the embedded default configuration.
## OCI_HOOK=open|closed also installs the runtime hook for podman and CRI-O first (see
## docs/runtime-hook.md): new containers then start only once their rule is in the kernel.
OCI_HOOK ?=
OCI_HOOK_TIMEOUT ?= 2s
OCI_HOOKS_DIR ?= /usr/share/containers/oci/hooks.d
run: release $(if $(OCI_HOOK),install-oci-hook)
	@echo "sidewalld: gRPC on unix://$(SOCKET); in another terminal: ./target/release/sidewall getevents -o compact"
	./target/release/sidewalld

## The runtime hook, for every podman and CRI-O container of this host (make uninstall-oci-hook
## takes it off again).
.PHONY: install-oci-hook uninstall-oci-hook
install-oci-hook: release
	./target/release/sidewall-oci-hook --server unix://$(SOCKET) --fail $(or $(OCI_HOOK),open) \
		--timeout $(OCI_HOOK_TIMEOUT) install --hooks-dir $(OCI_HOOKS_DIR) --bin-dir /usr/local/bin

uninstall-oci-hook:
	@if [ -x /usr/local/bin/sidewall-oci-hook ]; then \
		/usr/local/bin/sidewall-oci-hook uninstall --hooks-dir $(OCI_HOOKS_DIR) --bin-dir /usr/local/bin; \
	else rm -f $(OCI_HOOKS_DIR)/sidewall.json; fi

## Everything: lint, the deploy checks, unit tests, and the privileged tests that load the
## real eBPF programs (the image test runs the image deploy-check built).
test: lint build deploy-check
	$(CARGO) test --workspace -- --test-threads=$(TEST_THREADS)

## The attack-scenario catalog (tests/scenarios/) on real pods, in monitor and enforce mode,
## against a real sidewalld; prints the table; then a policy suggested from the benign pod,
## enforced against the catalog's attacks on that pod. Also part of `make test`.
.PHONY: scenarios
scenarios: build
	$(CARGO) test -p sidewall-tests --test scenarios -- --nocapture --test-threads=1
	$(CARGO) test -p sidewall-tests --test advise -- --nocapture --test-threads=1

## The daemon's image, localhost/sidewall:dev, from the binaries `make release` built, on a
## Debian base made with mmdebstrap (made once, then kept): scripts/image.sh.
.PHONY: image deploy-check
image: release
	bash scripts/image.sh

## The image, and the Helm chart rendered by helm with its defaults and each values file of
## deploy/helm/sidewall/ci/, every object validated against the Kubernetes schemas.
deploy-check: image
	/opt/sidewall-venv/bin/python deploy/validate.py

unit: build
	$(CARGO) test --workspace --lib --bins

lint: setup
	$(CARGO) fmt --all -- --check
	rustfmt --edition 2024 --check bpf/programs/src/main.rs
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
	rustfmt --edition 2024 bpf/programs/src/main.rs

clean:
	$(CARGO) clean

## Benchmarks side by side in one run, written to BENCHMARKS.md (about 10 minutes; as root).
## BENCH_QUICK=1 make bench: tiny iterations (under 2 minutes), to check the bench itself;
## BENCH_ONLY=7 (a title prefix): only that section.
.PHONY: bench
bench: setup
	$(CARGO) build --release --workspace
	BENCH_QUICK=$(BENCH_QUICK) BENCH_ONLY=$(BENCH_ONLY) $(CARGO) run --release -p sidewall-bench
