#!/usr/bin/env bash
# `make deploy-check`: the container and Kubernetes deployments checked without Docker or a cluster.
#
#   1. toolchain  infra/deploy/check-toolchain.py: the Dockerfile's Rust image and the workspace's
#                 rust-version are not older than the locked dependencies need
#   2. tools      helm (built from source with Go, once) and a venv with kubernetes-validate and
#                 PyYAML (once), cached under $SHOP_CACHE_DIR (default ~/.cache/shop) and keyed by
#                 version
#   3. wiring     infra/deploy/check-wiring.py: docker-compose.yml, the Helm chart and
#                 infra/local/services.sh against infra/deploy/wiring.yaml
#   4. helm       helm lint --strict and helm template with the default values and each
#                 helm/shop/examples/*.yaml; the rendered manifests validated offline against the
#                 Kubernetes $KUBE_VERSION schemas (strict: unknown fields fail)
#
# Every step runs (unless the tools cannot be installed); the summary names the ones that failed,
# and each says what and where. KUBE_VERSION (default 1.31.0) is passed to helm as --kube-version:
# without it helm assumes Kubernetes 1.20. Needs cargo, python3 and Go >= $GO_MIN (helm's go.mod).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE_DIR="${SHOP_CACHE_DIR:-$HOME/.cache/shop}"
KUBE_VERSION="${KUBE_VERSION:-1.31.0}"
HELM_VERSION=v3.21.4
HELM_DIR="$CACHE_DIR/helm-$HELM_VERSION"
HELM="$HELM_DIR/helm"
GO_MIN=1.26 # the `go` line of helm v3.21.4's go.mod
KV_VERSION=1.37.0 # kubernetes-validate; all pins in infra/deploy/requirements.txt
VENV="$CACHE_DIR/venv-kubernetes-validate-$KV_VERSION"
REQUIREMENTS="$REPO/infra/deploy/requirements.txt"
CHART="$REPO/helm/shop"
# Custom resources the chart may render, for which no schema exists offline (Prometheus operator).
CRD_KINDS=(ServiceMonitor)

log() { printf '[deploy-check] %s\n' "$*"; }
die() { printf '[deploy-check] FAILED: %s\n' "$*" >&2; exit 1; }
step() { printf '\n[deploy-check] ---- %s\n' "$*"; }
failed=()
fail() { printf '[deploy-check] FAILED: %s\n' "$*" >&2; failed+=("$1"); }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
start=$SECONDS

# ------------------------------------------------------------------ 1. toolchain
step "1/4 toolchain"
command -v cargo >/dev/null || die "cargo is not on PATH (the toolchain check reads cargo metadata)"
command -v python3 >/dev/null || die "python3 is not on PATH"
python3 "$REPO/infra/deploy/check-toolchain.py" || fail "toolchain" "(see FAIL above)"

# ------------------------------------------------------------------ 2. tools
step "2/4 tools"
need_go() { # what needs it
  command -v go >/dev/null || die "Go >= $GO_MIN is needed to build $1 and is not on PATH"
  local have; have="$(go env GOVERSION | sed 's/^go//')"
  if [ "$(printf '%s\n%s\n' "$GO_MIN" "$have" | sort -V | head -n1)" != "$GO_MIN" ]; then
    die "Go $have is too old to build $1: it needs Go >= $GO_MIN"
  fi
}

install_helm() {
  if [ -x "$HELM" ]; then log "helm $HELM_VERSION: $HELM (cached)"; return; fi
  need_go "helm $HELM_VERSION"
  log "building helm $HELM_VERSION from source ($(go version | cut -d' ' -f3)); once, then cached in $HELM_DIR"
  local tmp="$HELM_DIR.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  local t0=$SECONDS
  # -ldflags: the version helm reports (go install leaves it at the minor version).
  if ! (cd "$tmp" && GOBIN="$tmp" GOPATH="$CACHE_DIR/go" GOMODCACHE="$CACHE_DIR/go/mod" \
        GOFLAGS=-buildvcs=false CGO_ENABLED=0 \
        go install -trimpath -ldflags "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
          "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") >"$CACHE_DIR/helm-build.log" 2>&1; then
    tail -n 30 "$CACHE_DIR/helm-build.log" >&2; rm -rf "$tmp"
    die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed (log: $CACHE_DIR/helm-build.log; needs the Go module proxy)"
  fi
  rm -rf "$HELM_DIR"; mv "$tmp" "$HELM_DIR"
  log "helm built in $((SECONDS - t0)) s"
}

install_venv() {
  if [ -x "$VENV/bin/kubernetes-validate" ] && cmp -s "$REQUIREMENTS" "$VENV/requirements.txt"; then
    log "kubernetes-validate $KV_VERSION: $VENV (cached)"; return
  fi
  log "creating $VENV (kubernetes-validate $KV_VERSION, PyYAML; pins in infra/deploy/requirements.txt)"
  # In place (a venv's scripts name their interpreter by path); requirements.txt, copied last,
  # marks it complete.
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    log "python3 -m venv failed: installing python3-venv"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r "$REQUIREMENTS" \
    || die "pip install -r infra/deploy/requirements.txt failed"
  "$VENV/bin/pip" check >/dev/null \
    || { "$VENV/bin/pip" check; die "the pins in infra/deploy/requirements.txt are inconsistent (pip check)"; }
  cp "$REQUIREMENTS" "$VENV/requirements.txt"
}

mkdir -p "$CACHE_DIR"
install_helm
install_venv
export HELM_CACHE_HOME="$CACHE_DIR/helm-home/cache" HELM_CONFIG_HOME="$CACHE_DIR/helm-home/config" \
  HELM_DATA_HOME="$CACHE_DIR/helm-home/data"
log "$("$HELM" version --short), kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -n1)"

# ------------------------------------------------------------------ 4. wiring
step "3/4 wiring"
"$VENV/bin/python" "$REPO/infra/deploy/check-wiring.py" --helm "$HELM" --kube-version "$KUBE_VERSION" \
  || fail "wiring" "(see FAIL above; the description is infra/deploy/wiring.yaml)"

# ------------------------------------------------------------------ 5. helm
step "4/4 helm lint, template, schemas (Kubernetes $KUBE_VERSION)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

check_values() { # label rendered-file [helm args...]: lint, template, schemas; 1 on the first problem
  local label=$1 rendered=$2; shift 2
  if ! "$HELM" lint --strict --quiet --kube-version "$KUBE_VERSION" "$CHART" "$@" >"$out/lint.txt" 2>&1; then
    cat "$out/lint.txt"; fail "helm" "helm lint --strict ($label)"; return 1
  fi
  if ! "$HELM" template shop "$CHART" --kube-version "$KUBE_VERSION" "$@" >"$rendered" 2>"$out/template.txt"; then
    cat "$out/template.txt"; fail "helm" "helm template ($label)"; return 1
  fi
  local kinds skipped="" line kind
  kinds="$(grep -E '^kind: ' "$rendered" | sort | uniq -c | awk '{printf "%s %s, ", $1, $3}')"
  if ! "$VENV/bin/kubernetes-validate" -k "$KUBE_VERSION" --strict --quiet "$rendered" >"$out/validate.txt" 2>&1; then
    grep -v "Couldn't find schema" "$out/validate.txt" || true
    fail "helm" "schema validation of helm template ($label) against Kubernetes $KUBE_VERSION"; return 1
  fi
  while read -r line; do
    kind="$(sed -n "s/.*Couldn't find schema for kind \([A-Za-z]*\) .*/\1/p" <<<"$line")"
    if [ -z "$kind" ]; then echo "$line"; continue; fi
    if [[ " ${CRD_KINDS[*]} " != *" $kind "* ]]; then
      fail "helm" "helm template ($label) renders kind $kind, which has no Kubernetes $KUBE_VERSION schema (a typo, or a removed API?)"
      return 1
    fi
    skipped="$kind"
  done <"$out/validate.txt"
  log "ok  $label: lint --strict, template (${kinds%, }), schemas${skipped:+ (none offline for the custom resource $skipped)}"
}

check_values "default values" "$out/render-default.yaml" || true
for vf in "$CHART"/examples/*.yaml; do
  [ -e "$vf" ] || continue
  check_values "-f ${vf#"$REPO"/}" "$out/render-$(basename "$vf")" -f "$vf" || true
done

if ((${#failed[@]})); then
  step "FAILED after $((SECONDS - start)) s: $(printf '%s\n' "${failed[@]}" | sort -u | tr '\n' ' ')(see FAILED above)"
  exit 1
fi
step "all deployment checks passed in $((SECONDS - start)) s"
