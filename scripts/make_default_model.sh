#!/usr/bin/env bash
# Remake the bundled model forecaster/models/default.keras from the synthetic scene.
#
# Twelve purely normal synthetic videos (anomaly_rate=0, seeds 101-112, 500 frames each,
# 64x64): ten to train on, two held out for validation and calibration. Seeds 101+ keep the
# training scenes apart from the small seeds used in examples, tests and evaluations.
# About 5-10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

data=()
for seed in $(seq 101 112); do
    data+=("synthetic:?anomaly_rate=0&seed=${seed}")
done

exec "$PYTHON" -m forecaster train "${data[@]}" \
    --out forecaster/models/default.keras \
    --arch convlstm-ae --size 64x64 --max-frames 500 \
    --epochs 12 --batch-size 4 --seed 0
