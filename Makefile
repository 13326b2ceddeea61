# firma — see README.md. `make test` is what CI runs (as root).
GO      ?= go
BIN     ?= firma
PREFIX  ?= /usr/local
UNITDIR ?= /etc/systemd/system
GOFILES  = $(shell git ls-files '*.go' 2>/dev/null)

.PHONY: all build generate check-generate lint test bench demo install clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/firma

# Regenerate the committed bpf2go output (needs clang and libbpf headers).
generate:
	$(GO) generate ./bpf/...

# The committed BPF objects must match the C sources.
check-generate: generate
	git diff --exit-code -- bpf/

lint:
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "not gofmt-ed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test: build lint
	$(GO) test -count=1 -timeout 20m ./...

bench: build
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./...

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
