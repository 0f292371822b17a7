// Package imagetest holds the test of the container image: it builds the
// image with `make image` and podman (the path that works on machines that
// cannot pull base images), inspects its configuration, extracts its root
// filesystem and runs the sidecar found there (`version`, and as root
// `run` chrooted into it as the image's user). It has no code of its own.
package imagetest
