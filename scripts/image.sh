#!/usr/bin/env bash
# Builds the daemon's image with podman, offline: a minimal Debian base made with mmdebstrap
# and `podman import` (once: it is kept under a tag that names its recipe), then
# deploy/Containerfile over the binaries of target/$PROFILE (make release builds them).
#
# Environment: IMAGE (default localhost/sidewall:dev), PROFILE (release), SUITE (bookworm).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-localhost/sidewall:dev}
PROFILE=${PROFILE:-release}
SUITE=${SUITE:-bookworm}
# The base's recipe; a change of it makes a new base.
BASE_PACKAGES=ca-certificates
BASE=localhost/sidewall-base:$SUITE-$(printf '%s %s' "$SUITE" "$BASE_PACKAGES" | sha256sum | cut -c1-12)

log() { printf 'image: %s\n' "$*" >&2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! podman image exists "$BASE"; then
  log "making the base $BASE with mmdebstrap"
  mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/{doc,man,locale}/*' "$SUITE" "$work/base.tar"
  podman import --quiet "$work/base.tar" "$BASE" >/dev/null
  rm -f "$work/base.tar"
fi

mkdir -p "$work/bin"
for bin in sidewalld sidewall sidewall-oci-hook; do
  src=$ROOT/target/$PROFILE/$bin
  [ -x "$src" ] || { log "$src is missing: run make release first"; exit 1; }
  cp "$src" "$work/bin/$bin"
done
log "building $IMAGE from $BASE and target/$PROFILE"
podman build --quiet --network none --build-arg "BASE=$BASE" -f "$ROOT/deploy/Containerfile" -t "$IMAGE" "$work" >/dev/null
log "$IMAGE ready"
