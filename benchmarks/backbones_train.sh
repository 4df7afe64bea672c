#!/usr/bin/env bash
# Trains one backbone with the held-out protocol's recipe from ImageNet, both stages to the end of
# their learning-rate schedules: configs/lite2_stage1.yaml (static images) then
# configs/lite2_stage2.yaml (per-clip video), with the backbone and seed as the only changes.
# Re-running resumes whichever stage was interrupted. Outputs: runs/bb_<backbone>_s<seed>_{stage1,stage2}.
#
#   bash benchmarks/backbones_train.sh efficientnet-lite1 0
#
# Compare the results with benchmarks/heldout.py (choices on --split select, numbers on --split report).
set -euo pipefail
backbone=${1:?usage: backbones_train.sh BACKBONE [SEED]}
seed=${2:-0}
tag=bb_${backbone#efficientnet-}_s${seed}

run_stage() {  # config, name, extra overrides...
    local config=$1 name=$2; shift 2
    if [[ -f runs/$name/model_final.pth ]]; then
        echo "$name: done already"; return
    fi
    local resume=()
    [[ -f runs/$name/checkpoints/latest.pth ]] && resume=(--resume)
    python -m pcvos train --config "$config" name="$name" seed="$seed" "$@" "${resume[@]}"
}

run_stage configs/lite2_stage1.yaml "${tag}_stage1" model.backbone="$backbone"
run_stage configs/lite2_stage2.yaml "${tag}_stage2" init.checkpoint="runs/${tag}_stage1/model_final.pth"
