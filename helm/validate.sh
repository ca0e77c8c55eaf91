#!/usr/bin/env bash
# Superseded by `make deploy-check` (infra/deploy/check.sh): helm built and cached, helm lint
# --strict and helm template with the default values and each helm/shop/examples/*.yaml, the
# rendered manifests validated against the Kubernetes schemas, and the wiring checks.
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/infra/deploy/check.sh" "$@"
