# The scenario pods' image, as the tests build it (tests/harness/pod.rs): busybox with its
# applets as links, and the static swtool. Build from the repository root:
#   docker build -f deploy/kind/test-image.Dockerfile -t localhost/sidewall-test:scenarios .
FROM docker.io/library/debian:12 AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends busybox-static gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY tests/tools/swtool.c /src/swtool.c
RUN mkdir -p /rootfs/bin \
 && cp /bin/busybox /rootfs/bin/busybox \
 && for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "/rootfs/bin/$a"; done \
 && gcc -static -O2 -o /rootfs/bin/swtool /src/swtool.c

FROM scratch
COPY --from=build /rootfs/ /
ENV PATH=/bin
