# Entry points of consumer-operator. The local stack (etcd, kube-apiserver,
# kube-controller-manager, Keycloak on 127.0.0.1) is described in stack/up.sh.

.PHONY: build crds test dev stack-up stack-down fmt lint

build:
	cargo build

# The CRD files are exactly what `consumer-operator crd` prints, one file per CRD.
crds:
	mkdir -p crds
	cargo run -q -- crd --out-dir crds

# Unit and integration tests; starts the stack for the run unless it is already up.
test:
	stack/with-stack.sh cargo test --locked

# The stack, the CRDs, the example realm and manifests, and the operator in the foreground.
dev: stack-up
	stack/dev.sh

stack-up:
	stack/up.sh

stack-down:
	stack/down.sh

fmt:
	cargo fmt

lint:
	cargo clippy --all-targets -- -D warnings

# Benchmarks against the running local stack (not part of `make test`): for each size, the
# Keycloak floor, the onboarding through the release operator and a restart; then memory with
# 10,000 Consumers and 10,000 unrelated Secrets. One JSON line per result; see docs/benchmarks.md.
.PHONY: bench faults bench-crds
BENCH_SIZES ?= 100,1000
# The benchmarks apply Consumers to the running stack, which needs the CRDs first.
bench-crds:
	. .stack/env && $$KUBECTL apply --server-side -f crds/ >/dev/null && \
	  $$KUBECTL wait --for condition=established --timeout=60s -f crds/ >/dev/null

bench: bench-crds
	cargo build --release
	cd bench && cargo build --release
	target/release/consumer-operator-bench onboard --sizes $(BENCH_SIZES)
	target/release/consumer-operator-bench memory --consumers 10000 --secrets 10000
	target/release/consumer-operator-bench certificates --n 100 --grace-period 10s

# Fault tests against the running local stack (not part of `make test`): four 1000-consumer
# onboardings, each interrupted by one kind of crash (SIGKILL, then a start on the same data), each
# ending with the audit: the operator three times, Keycloak, kube-apiserver, etcd.
FAULT_SIZE ?= 1000
faults: bench-crds
	cargo build --release
	cd bench && cargo build --release
	target/release/consumer-operator-bench faults --n $(FAULT_SIZE) --operator-kills 3
	target/release/consumer-operator-bench faults --n $(FAULT_SIZE) --keycloak-kill
	target/release/consumer-operator-bench faults --n $(FAULT_SIZE) --apiserver-kill
	target/release/consumer-operator-bench faults --n $(FAULT_SIZE) --etcd-kill
