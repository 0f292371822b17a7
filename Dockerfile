# The txsink image for machines that can pull base images (docker, or podman
# with a registry): build a static sidecar in the Go image, ship it on scratch.
# `make image` passes VERSION and REVISION. Keep the final stage the same as
# Dockerfile.prebuilt (what `make image` builds with podman from a binary
# built on the host, and what internal/imagetest checks): one layout.
ARG GO_IMAGE=golang:1.26-bookworm

FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=
# CGO_ENABLED=0: scratch has no libc; the sidecar needs no cgo.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=${VERSION}" -o /sidecar ./cmd/sidecar
# The root filesystem: the non-root user, the CA bundle (TLS to Kafka and
# MySQL), a world-writable /tmp, /var/lib for the data dir below.
RUN mkdir -p /rootfs/etc/ssl/certs /rootfs/tmp /rootfs/var/lib /empty \
 && chmod 1777 /rootfs/tmp \
 && cp deploy/image/passwd deploy/image/group /rootfs/etc/ \
 && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ \
 && cp /sidecar /rootfs/sidecar

FROM scratch
ARG VERSION=
ARG REVISION=
COPY --from=build /rootfs/ /
# The data dir is created by this COPY so that only it (not /var, /var/lib)
# belongs to the sidecar's user.
COPY --from=build --chown=65532:65532 /empty/ /var/lib/txsink/
USER 65532:65532
WORKDIR /var/lib/txsink
VOLUME /var/lib/txsink
# HTTP API, Raft.
EXPOSE 8470 8471
LABEL org.opencontainers.image.title="txsink" \
      org.opencontainers.image.description="exactly-once output into Kafka and MySQL for apps in any language" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/txsink/txsink" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/sidecar"]
CMD ["run", "--config", "/etc/txsink/txsink.yaml"]
