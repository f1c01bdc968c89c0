#!/usr/bin/env bash
# Regenerates leaderboards/mnist5k.md and .json and the calibration reports beside them:
# calibrates the null of every scheme on clean reference models and measures its false
# claims on foreign ones (scripts/calibrate-mnist5k.sh; a scheme calibrated on this
# protocol version already is skipped, since a new null re-measures its matches), then
# plays every defense against every attack and the study's chains on every seed of SEEDS
# (default 0-5: six seeds, the fewest whose 95% Clopper-Pearson intervals separate 0 of n from n of n,
# which the ranking needs) with `arena sweep`, then writes the leaderboard and its site
# (leaderboards/mnist5k/).
# Trained models are cached and finished matches are skipped, so an interrupted run
# resumes where it stopped. The records behind the published board
# (leaderboards/mnist5k.results.jsonl, `arena results export`) are imported first, so a
# fresh clone re-renders the board without playing a match again and a sweep resumes from
# them (FRESH=1 plays everything); on exit, finished or not, every stored match and
# calibration is exported there again.
#
#   bash scripts/leaderboard-mnist5k.sh                              # local, two threads
#   ARENA_THREADS=1 bash scripts/leaderboard-mnist5k.sh --executor ray --workers 2
#
# Options go to `arena sweep`. The published board ran the second way (two matches side by
# side, one thread each: 1.8x the first on a 2-core machine, README "Sweeps on Ray"). The
# thread count decides a CPU run's bits (README, "Reproducibility"): each record says
# which it ran with, and the leaderboard's versions line names any setting that differs
# between its matches, with their seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a seeds <<< "${SEEDS:-0 1 2 3 4 5}"
records=leaderboards/mnist5k.results.jsonl
if [ "${FRESH:-0}" != 1 ] && [ -f "$records" ]; then
  arena results import "$records"
fi
trap 'arena results export --protocol mnist5k --out "$records"' EXIT
bash scripts/calibrate-mnist5k.sh
# Attacked models are not kept (45 MB each, 10 GB a seed); the records are.
arena sweep --protocol mnist5k --defense all --attack all --attack chains \
  "${seeds[@]/#/--seed=}" --discard-attacked "$@"
# The removal-cost curves (README, "Combined attacks and the cost of removal") of the
# attacks the issue names, against every defense.
arena sweep --protocol mnist5k --defense all --attack ftal --attack prune --attack quantize \
  --attack distill --attack weight-shift --budget-curve "${seeds[@]/#/--seed=}" \
  --discard-attacked "$@"
arena leaderboard --protocol mnist5k --out leaderboards --html leaderboards
