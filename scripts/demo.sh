#!/usr/bin/env bash
# Set up lesionlab and run the demo on the sample it ships: prepare, split, two ratios, report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/lesionlab demo --out "${1:-demo-out}"
