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
# A scheme already calibrated on this version of the protocol is skipped: a new
# calibration is a new null, and every stored match of a fitted-null scheme would be
# measured again (its attack played again where the attacked model was discarded).
# FORCE=1 calibrates anyway.
# Usage: [FORCE=1] bash scripts/calibrate-mnist5k.sh [scheme ...]   (default: every scheme)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p leaderboards/calibration
schemes=("$@")
if [ ${#schemes[@]} -eq 0 ]; then
  schemes=(backdoor-wm content noise unrelated frontier-stitching backdoor-wm-pretrained none
    uchida deepsigns)
fi
for defense in "${schemes[@]}"; do
  if [ "${FORCE:-0}" != 1 ] && python - "$defense" <<'PY'
import sys
from arena.core.protocols import get_protocol
from arena.storage.calibrations import RECORD_FORMAT, CalibrationStore
record = CalibrationStore().latest(get_protocol("mnist5k"), sys.argv[1])
sys.exit(0 if record and record.get("format") == RECORD_FORMAT else 1)
PY
  then
    echo "calibrate-mnist5k: $defense is calibrated on this protocol version; skipped (FORCE=1 redoes it)"
    continue
  fi
  sizes=(--keys 30)
  # White-box keys read a layer of resnet18: only the 3 resnet18 reference models fit them
  # (no foreign architecture has the layer), so 340 claim keys each give the 1,020 pairs.
  case "$defense" in uchida | deepsigns) sizes=(--keys 340 --claim-keys 340) ;; esac
  arena calibrate --protocol mnist5k --defense "$defense" --models 12 --foreign 9 "${sizes[@]}" \
    > "leaderboards/calibration/mnist5k-$defense.md.tmp"
  mv "leaderboards/calibration/mnist5k-$defense.md.tmp" "leaderboards/calibration/mnist5k-$defense.md"
done
