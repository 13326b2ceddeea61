# firma — see README.md. `make test` is what CI runs (as root).
GO      ?= go
BIN     ?= firma
PREFIX  ?= /usr/local
UNITDIR ?= /etc/systemd/system
GOFILES  = $(shell git ls-files '*.go' 2>/dev/null)
# What `firma version` prints. go build records the commit by itself in a plain clone, but not in a
# git worktree, nor with -buildvcs=false: the link flags carry it in every case.
VERSION  ?= $(shell git describe --tags --dirty 2>/dev/null)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null)
MODIFIED ?= $(shell git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo true)
VPKG      = github.com/openfirma/firma/version
LDFLAGS   = -X $(VPKG).Version=$(VERSION) -X $(VPKG).Commit=$(COMMIT) -X $(VPKG).Modified=$(MODIFIED)

.PHONY: all deps build generate check-generate lint test bench bench-quick bench-micro fuzz demo install clean

all: build

# Debian packages that tests and the demo need on a fresh host (the list is in .ci/deps).
deps:
	.ci/deps

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/firma

# Regenerate the committed bpf2go output (needs clang and libbpf headers).
generate:
	$(GO) generate ./bpf/...

# The committed BPF objects must match the C sources.
check-generate: generate
	git diff --exit-code -- bpf/

lint:
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "not gofmt-ed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod/go.sum are not tidy: run 'go mod tidy'"; $(GO) mod tidy -diff; exit 1; }

test: build lint
	$(GO) test -count=1 -timeout 20m ./...

# The comparison harness (root): firma against a direct connection, tinyproxy and squid, written to
# bench/results.md. BENCHFLAGS narrows it, e.g. BENCHFLAGS='-systems firma-mitm -workloads new
# -rounds 1 -profile /tmp/prof'; see bench/doc.go.
BENCHFLAGS ?=
BENCH = $(GO) test -count=1 -timeout 0 -run '^$$' -bench '^BenchmarkCompare$$' -benchtime 1x ./bench -args

bench:
	$(BENCH) $(BENCHFLAGS)

# Every system and workload in under two minutes; fails only when something does not work.
bench-quick:
	$(BENCH) -quick $(BENCHFLAGS)

# Go micro-benchmarks: policy decisions, audit append, MITM requests.
bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s $$($(GO) list ./... | grep -v '/bench$$')

# Every fuzz target in the repository, FUZZTIME each (go test runs one target at a time). Not part of
# `make test`, which runs the committed seed corpora (testdata/fuzz/) as plain tests. A failing input
# is written to the package's testdata/fuzz/<target>/: commit it with the fix.
FUZZTIME ?= 60s
fuzz:
	@set -e; for file in $$(git grep -l '^func Fuzz' -- '*_test.go'); do \
		for target in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$file); do \
			echo "== ./$$(dirname $$file) $$target ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) ./$$(dirname $$file); \
		done; \
	done

demo: build
	./$(BIN) demo

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/firma
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)/etc/firma
	for u in systemd/firma-sidecar.service systemd/firma-authority.service systemd/firma-agents.slice; do \
		sed 's|/usr/local/bin/firma|$(PREFIX)/bin/firma|g' $$u > $(DESTDIR)$(UNITDIR)/$$(basename $$u) && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$u) || exit 1; \
	done
	@echo "installed; run 'systemctl daemon-reload', write /etc/firma/firma.toml, then 'systemctl enable --now firma-sidecar'"

clean:
	rm -f $(BIN)
