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
