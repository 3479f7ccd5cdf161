# erofs-blockd: build, test, demo, benchmarks.
# Everything a target needs is installed by scripts/deps.sh (Debian packages)
# and scripts/vm/kernel.sh (the guest kernel for /dev/nbd0 tests).
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
BIN := bin/erofs-blockd
FUZZTIME ?= 30s

.PHONY: all build static deps vm-deps reference-deps test test-short vet demo fuzz bench bench-remote bench-tar bench-image clean

all: build

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/erofs-blockd

# A static binary for the QEMU guest tests.
static:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/erofs-blockd.static ./cmd/erofs-blockd

deps:
	bash scripts/deps.sh --all

vm-deps: deps
	bash scripts/vm/kernel.sh

# erofs-utils 1.9.4 from Debian's source package, in /opt (e2e/corpus_test.go).
reference-deps: deps
	bash scripts/erofs-utils.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

# The full suite: unit tests, fuzz seeds, host e2e (nbdfuse + loop + kernel
# EROFS), interop with nbdinfo/nbdcopy/qemu-img, and QEMU guest e2e.
test: vm-deps reference-deps build static vet
	$(GO) test -count=1 -timeout 60m -p 2 ./...

# Without the QEMU guest tests.
test-short: deps reference-deps build vet
	EROFS_BLOCKD_SKIP_VM=1 $(GO) test -count=1 -timeout 30m ./...

demo: deps build
	bash scripts/demo.sh

fuzz:
	bash scripts/fuzz.sh $(FUZZTIME)

bench:  # fio + nbdcopy vs nbdkit split/file and qemu-nbd; env knobs in scripts/bench.sh
	bash scripts/deps.sh && bash scripts/bench.sh

bench-dedup:  # backend bytes / unique bytes for 8 layered images, cache on and off (scripts/bench-dedup.sh)
	bash scripts/bench-dedup.sh

bench-remote:  # erofs-blockd on oci:// blobs vs nbdkit curl and curl, 0/10 ms RTT via internal/latproxy; env knobs in scripts/bench-remote.sh
	bash scripts/bench-remote.sh

bench-tar: deps reference-deps  # tar.gz layers: index build vs mkfs.erofs --tar=i --gzinfo, 4 KiB random reads vs nbdkit's gzip filter and the plain tar (scripts/bench-tar.sh)
	bash scripts/bench-tar.sh

bench-image: deps reference-deps  # an OCI image from a registry at 10 ms RTT: serve --image (pushed index / built at start) vs skopeo+umoci pull and pull+mkfs.erofs (scripts/bench-image.sh)
	bash scripts/bench-image.sh

clean:
	rm -rf bin
