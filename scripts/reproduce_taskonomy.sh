#!/usr/bin/env bash
# Paper reproduction for taskonomy at 90% sparsity (or the ratio given): see scripts/reproduce.sh and docs/REPRODUCING.md.
exec "$(dirname "$0")/reproduce.sh" taskonomy "${1:-90}"
