#!/usr/bin/env bash
# Paper reproduction for nyuv2 at 90% sparsity (or the ratio given): see scripts/reproduce.sh and docs/REPRODUCING.md.
exec "$(dirname "$0")/reproduce.sh" nyuv2 "${1:-90}"
