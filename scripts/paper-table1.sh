#!/usr/bin/env bash
# The seed paper's Table 1 (CIFAR-10 on ResNet-18: test and trigger-set accuracy of a model without a
# mark, marked from scratch, marked after pre-training), played again:
# `arena reproduce table1` over SEEDS (default 0 1 2) on PROTOCOL (default cifar10),
# writing the Markdown table of the paper's numbers beside ours to OUT (default
# leaderboards/paper/table1-<protocol>.md) and printing it.
#
# The data come from the data folder, ARENA_DATA (default $ARENA_HOME/data): CIFAR-10's
# cifar-10-batches-py/ as torchvision extracts them.
# Nothing downloads here; `arena data fetch cifar10` get them once.
# Trained models are cached and finished matches are read from the results database, so an
# interrupted run resumes.
#
#   bash scripts/paper-table1.sh                                  # the paper's setting: a GPU
#   PROTOCOL=cifar10-fixture ARENA_DATA=/path/to/fixture bash scripts/paper-table1.sh
#
# Extra options go to `arena reproduce` (--db, --cache-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
protocol="${PROTOCOL:-cifar10}"
read -r -a seeds <<< "${SEEDS:-0 1 2}"
out="${OUT:-leaderboards/paper/table1-$protocol.md}"
arena reproduce table1 --protocol "$protocol" "${seeds[@]/#/--seed=}" --out "$out" "$@"
