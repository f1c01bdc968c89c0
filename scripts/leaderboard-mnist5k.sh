#!/usr/bin/env bash
# Regenerates leaderboards/mnist5k.md and .json: every defense against the seed paper's
# fine-tuning attacks (and the null attack) on the default protocol, seed 0.
# Finished matches are cache hits, so an interrupted run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
for defense in none backdoor-wm backdoor-wm-pretrained; do
  for attack in none ftll ftal rtll rtal; do
    arena run --protocol mnist5k --seed 0 --defense "$defense" --attack "$attack" "$@"
  done
done
arena leaderboard --protocol mnist5k --out leaderboards
