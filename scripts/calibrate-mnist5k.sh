#!/usr/bin/env bash
# The null and the false-claim rate of every scheme on mnist5k: writes
# leaderboards/calibration/mnist5k-<scheme>.md. Each run fits a beta-binomial null for the
# schemes whose labels are not uniform (content, noise, unrelated, frontier-stitching; the
# others are exact and fit nothing) to the protocol's 12 clean reference models (4
# architectures x 3 training recipes) with 30 fresh keys each, and measures false claims
# with keys the fit never saw on the 9 foreign clean models (3 architectures the reference
# set lacks, 2 recipes each, and 3 whose training failed): 3,000 (key, model) pairs for
# backdoor-wm, 1,000 for every other scheme. The 21 models are trained once (cached) and
# shared by every scheme, so an interrupted run resumes where it stopped.
# Usage: bash scripts/calibrate-mnist5k.sh [scheme ...]   (default: every scheme)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p leaderboards/calibration
schemes=("$@")
if [ ${#schemes[@]} -eq 0 ]; then
  schemes=(backdoor-wm content noise unrelated frontier-stitching backdoor-wm-pretrained none
    uchida deepsigns)
fi
for defense in "${schemes[@]}"; do
  sizes=(--keys 30)
  # White-box keys read a layer of resnet18: only the 3 resnet18 reference models fit them
  # (no foreign architecture has the layer), so 340 claim keys each give the 1,020 pairs.
  case "$defense" in uchida | deepsigns) sizes=(--keys 340 --claim-keys 340) ;; esac
  arena calibrate --protocol mnist5k --defense "$defense" --models 12 --foreign 9 "${sizes[@]}" \
    > "leaderboards/calibration/mnist5k-$defense.md.tmp"
  mv "leaderboards/calibration/mnist5k-$defense.md.tmp" "leaderboards/calibration/mnist5k-$defense.md"
done
