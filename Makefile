# txsink — see README.md. Every target works on a fresh machine with Go;
# `make test` gets a MariaDB by itself (internal/mysqltest), stops it at the
# end (internal/cmd/testrun), and needs kcat only for the kcat check and
# podman for the image test (both installed by .ci/run).
GO       ?= go
BIN      := bin
PKGS     := ./...
DATA_DIR ?= ./data
# The version "sidecar version" prints (without git: the build info's).
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null)
LDFLAGS  := -X main.version=$(VERSION)
# go test flags; CI adds -race on the fast packages.
TESTFLAGS ?= -count=1 -timeout 15m

.PHONY: build run dev test test-race lint bench chaos ci clean tools image image-docker image-podman

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/sidecar ./cmd/sidecar
	$(GO) build -o $(BIN)/kafkabroker ./internal/cmd/kafkabroker

# The self-contained dev sidecar: its own Kafka-protocol broker process
# (survives a kill of the sidecar; stop a leftover one with
# `bin/sidecar dev --stop-broker --data-dir $(DATA_DIR)`) on 127.0.0.1:9092, HTTP API on 127.0.0.1:8470, the db sink if MariaDB answers.
run: build
	$(BIN)/sidecar dev --data-dir $(DATA_DIR)

dev: run

# go test through internal/cmd/testrun: the tests get a MariaDB of their own
# (a fresh TXSINK_TEST_CACHE, ~1.5 s to start) that is stopped at the end,
# pass or fail, without touching a server another run uses. Set
# TXSINK_TEST_CACHE or TXSINK_TEST_MYSQL_DSN to bring (and keep) your own.
# Built rather than go run: a signal then reaches testrun itself.
test:
	$(GO) build -o $(BIN)/testrun ./internal/cmd/testrun
	GO=$(GO) $(BIN)/testrun $(TESTFLAGS) $(PKGS)

# The race detector over the packages with concurrency of their own.
test-race:
	$(GO) test -race -count=1 -timeout 10m ./twopc/... ./raftlog/... ./api/... ./sinks/kafka/...

STATICCHECK := $(shell $(GO) env GOPATH)/bin/staticcheck
tools:
	@test -x $(STATICCHECK) || $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint: tools
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(STATICCHECK) $(PKGS)

# Benchmarks: the sidecar path against the direct client on the same broker
# and database, in one run, printed as a table of ratios.
bench: build
	$(GO) run ./internal/cmd/bench $(BENCHFLAGS)

# Kills the example app, the sidecar and mariadbd, stops (SIGSTOP) the broker
# and mariadbd, restarts the broker and slows an app at random, then proves
# every event was counted exactly once (internal/cmd/chaos). CHAOS_ROUNDS=20
# by default; CHAOS_SEED repeats a run's choices; CHAOS_FAULTS picks the
# kinds; CHAOS_MODE=dev runs it against `sidecar dev` and its own broker;
# CHAOS_NODES=3 runs a cluster of three `sidecar run` nodes and kills nodes;
# CHAOS_OFFSETS=group (or mixed) keeps the apps' input position in a
# consumer group and checks the group's committed offsets too.
chaos:
	$(GO) run ./internal/cmd/chaos

ci: lint test test-race

# The container image txsink:$(VERSION) (IMAGE_NAME, VERSION override), with
# docker if its daemon answers, else podman; IMAGE_TOOL=docker|podman picks.
# docker builds the multi-stage Dockerfile (Go image -> scratch). podman
# builds Dockerfile.prebuilt around a static sidecar built here, because
# these machines cannot pull base images and FROM scratch needs none; with
# the vfs storage driver, which needs no overlay support (nested in a
# container, rootless) and costs little for one ~30 MB layer. The tool is
# chosen in the recipe so that other targets never ask docker.
IMAGE_NAME ?= txsink
IMAGE      := $(IMAGE_NAME):$(VERSION)
IMAGE_TOOL ?=
REVISION   ?= $(shell git rev-parse HEAD 2>/dev/null)
PODMAN     ?= podman --storage-driver vfs
CA_BUNDLE  ?= /etc/ssl/certs/ca-certificates.crt
IMAGE_CTX  := $(BIN)/image
IMAGE_ARGS  = --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE)

image:
	@tool="$(IMAGE_TOOL)"; \
	if [ -z "$$tool" ]; then \
	  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then tool=docker; \
	  elif command -v podman >/dev/null 2>&1; then tool=podman; fi; \
	fi; \
	case "$$tool" in \
	docker|podman) $(MAKE) --no-print-directory image-$$tool ;; \
	?*) echo "make image: IMAGE_TOOL=$$tool: want docker or podman" >&2; exit 1 ;; \
	*) echo "make image needs docker (with a running daemon) or podman; neither works here." >&2; \
	   echo "Install one, e.g. apt-get install -y podman (or docker.io), or set IMAGE_TOOL=docker|podman." >&2; \
	   exit 1 ;; \
	esac

image-docker:
	docker build $(IMAGE_ARGS) .

image-podman:
	@test -n "$(VERSION)" || { echo "make image: no VERSION (no git here?): make image VERSION=..." >&2; exit 1; }
	@test -f $(CA_BUNDLE) || { echo "make image: no CA bundle at $(CA_BUNDLE): apt-get install -y ca-certificates" >&2; exit 1; }
	rm -rf $(IMAGE_CTX)
	mkdir -p $(IMAGE_CTX)/rootfs/etc/ssl/certs $(IMAGE_CTX)/rootfs/tmp $(IMAGE_CTX)/rootfs/var/lib $(IMAGE_CTX)/empty
	chmod 1777 $(IMAGE_CTX)/rootfs/tmp
	cp deploy/image/passwd deploy/image/group $(IMAGE_CTX)/rootfs/etc/
	cp $(CA_BUNDLE) $(IMAGE_CTX)/rootfs/etc/ssl/certs/ca-certificates.crt
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(IMAGE_CTX)/rootfs/sidecar ./cmd/sidecar
	$(PODMAN) build --layers=false -f Dockerfile.prebuilt $(IMAGE_ARGS) $(IMAGE_CTX)

clean:
	rm -rf $(BIN)
