#!/usr/bin/env bash
# Refresh requirements.lock: resolve the project's dependencies afresh, as an unpinned
# `pip install -e '.[dev]'` would today (the newest releases pyproject.toml allows), in a
# throwaway virtual environment, and write every installed version to requirements.lock.
#
#   bash scripts/refresh-lock.sh            # with python3
#   PYTHON=python3.12 bash scripts/refresh-lock.sh
#
# A few minutes and about 6 GB of downloads (the CUDA build of torch and its nvidia-*
# wheels). Review the diff, run the tests, and commit the new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[dev]'

where="$("$venv/bin/python" -c 'import platform; print(platform.system(), platform.machine() + ",", platform.python_implementation(), platform.python_version())')"
{
    echo "# requirements.lock: the exact version of every package the arena installs (its"
    echo "# dependencies, the dev extra's and theirs, the nvidia-* CUDA wheels of torch, pip)."
    echo "# A pip constraints file:  pip install -c requirements.lock -e '.[dev]'"
    echo "# Resolved on $where, $(date -u +%Y-%m-%d)."
    echo "# Refresh (a fresh venv, an unpinned install, pip freeze):  bash scripts/refresh-lock.sh"
    # --all keeps pip and setuptools (a dev dependency); the editable project is not pinned.
    "$venv/bin/python" -m pip freeze --all --exclude-editable | grep -viE '^watermark[-_]arena[=@ ]'
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages, $where)"
