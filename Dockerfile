# The Palisade image: the one `palisade` binary on an empty base, with only the glibc
# files it links, the CA bundle (for wss:// upstreams without upstream_ca) and a passwd
# entry for uid 65532. No shell, no package manager, no HEALTHCHECK (Kubernetes probes
# /healthz and /readyz on the WSS port).
#
# Build: scripts/build-image.sh (offline, podman). The release binary is compiled on the
# host (Debian bookworm, the same glibc as the build stage) and handed in through the
# build context (.dockerignore admits target/release/palisade only), because offline
# there is no Rust image to pull and bookworm's own rustc (1.63) is older than the
# workspace's rust-version (1.88, edition 2024). The build stage is a Debian bookworm
# minbase made with debootstrap (BASE); any debian:bookworm image with ca-certificates
# works too. It checks the binary runs, then gathers the runtime files into /rootfs.
ARG BASE=localhost/palisade-base:bookworm

FROM ${BASE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY target/release/palisade /src/palisade
RUN mkdir -p /rootfs/etc/ssl/certs /rootfs/tmp \
    && install -m 0755 /src/palisade /rootfs/palisade \
    && ldd /rootfs/palisade | grep -o '/[^ ]*' | sort -u | xargs -I{} cp -L --parents {} /rootfs/ \
    && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt \
    && echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' > /rootfs/etc/passwd \
    && echo 'nonroot:x:65532:' > /rootfs/etc/group \
    && chmod 1777 /rootfs/tmp \
    && /rootfs/palisade --version

FROM scratch
COPY --from=build /rootfs/ /
USER 65532:65532
EXPOSE 8443 9443 9444
ENTRYPOINT ["/palisade"]
CMD ["--help"]
