#!/usr/bin/env bash
# Runs once, inside the new environment, from the workflow's working directory (the repository root).
set -euo pipefail
python -m pip install --quiet -c constraints.txt -e '.[cluster]'
