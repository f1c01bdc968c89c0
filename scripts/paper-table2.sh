#!/usr/bin/env bash
# The seed paper's Table 2 (transfer learning from CIFAR-10 to STL-10: STL-10 test accuracy and
# trigger-set accuracy with the owner's output layer put back), played again:
# `arena reproduce table2` over SEEDS (default 0 1 2) on PROTOCOL (default cifar10),
# writing the Markdown table of the paper's numbers beside ours to OUT (default
# leaderboards/paper/table2-<protocol>.md) and printing it.
#
# The data come from the data folder, ARENA_DATA (default $ARENA_HOME/data): CIFAR-10's
# cifar-10-batches-py/ and STL-10's stl10_binary/ as torchvision extracts them.
# Nothing downloads here; `arena data fetch cifar10` and `arena data fetch stl10` get them once.
# Trained models are cached and finished matches are read from the results database, so an
# interrupted run resumes, and the marked models Table 1 trained are reused here.
#
#   bash scripts/paper-table2.sh                                  # the paper's setting: a GPU
#   PROTOCOL=cifar10-fixture ARENA_DATA=/path/to/fixture bash scripts/paper-table2.sh
#
# Extra options go to `arena reproduce` (--db, --cache-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
protocol="${PROTOCOL:-cifar10}"
read -r -a seeds <<< "${SEEDS:-0 1 2}"
out="${OUT:-leaderboards/paper/table2-$protocol.md}"
arena reproduce table2 --protocol "$protocol" "${seeds[@]/#/--seed=}" --out "$out" "$@"
