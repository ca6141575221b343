#!/usr/bin/env bash
# Paper reproduction for cityscapes at 90% sparsity (or the ratio given): see scripts/reproduce.sh and docs/REPRODUCING.md.
exec "$(dirname "$0")/reproduce.sh" cityscapes "${1:-90}"
