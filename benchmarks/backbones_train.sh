#!/usr/bin/env bash
# Trains one backbone with the held-out protocol's recipe from ImageNet, both stages to the end of
# their learning-rate schedules: configs/lite2_stage1.yaml (static images) then
# configs/lite2_stage2.yaml (per-clip video), with the backbone and seed as the only changes.
# LENGTH (a whole number, default 1) stretches both stages: iterations, learning-rate steps and the
# hard-pixel loss's warm-up are multiplied by it, so the schedules keep their shape and still finish.
# DATA picks the DAVIS sequences both stages read: "train" (default) is the protocol's 15-sequence
# train split; "v1" is the 25 sequences pcvos-lite v1/v1.1 trained on (all but
# pcvos.eval.protocol.REPORT_UNSEEN_BY_V1), so a recipe can be compared with the shipped model on
# the same data and scored on the five sequences neither read (select and report are then not clean).
# Re-running resumes whichever stage was interrupted. THREADS=N in the environment overrides the
# configs' torch thread count (1) for this run, e.g. to give a lone run both cores; it does not
# change the recipe, only the speed (and float rounding).
# Outputs: runs/bb_<backbone>_s<seed>[_x<LENGTH>][_v1data]_{stage1,stage2}
#
#   bash benchmarks/backbones_train.sh efficientnet-lite1 0
#   bash benchmarks/backbones_train.sh efficientnet-lite0 0 2      # twice as long
#   bash benchmarks/backbones_train.sh efficientnet-lite0 0 4 v1   # 4x, on v1's 25 sequences
#
# Compare the results with benchmarks/heldout.py (choices on --split select, numbers on --split report).
# One compound command, so bash reads the whole file before running any of it: a run lasts hours,
# and bash reads a script as it goes, so an edit made meanwhile would be run from the wrong offset.
{
set -euo pipefail
cd "$(dirname "$0")/.."   # configs/ and runs/ are the repository's, wherever this is called from
backbone=${1:?usage: backbones_train.sh BACKBONE [SEED] [LENGTH] [DATA]}
seed=${2:-0}
length=${3:-1}
data=${4:-train}
if ! [[ $length =~ ^[1-9][0-9]*$ ]]; then
    echo "backbones_train.sh: LENGTH must be a whole number >= 1, got '$length'" >&2; exit 2
fi
if [[ -n ${THREADS:-} ]] && ! [[ $THREADS =~ ^[1-9][0-9]*$ ]]; then
    echo "backbones_train.sh: THREADS must be a whole number >= 1, got '$THREADS'" >&2; exit 2
fi
if [[ $data != train && $data != v1 ]]; then
    echo "backbones_train.sh: DATA must be 'train' or 'v1', got '$data'" >&2; exit 2
fi
tag=bb_${backbone#efficientnet-}_s${seed}
(( length > 1 )) && tag=${tag}_x${length}
[[ $data == v1 ]] && tag=${tag}_v1data

stretch() {  # config -> its schedule overrides multiplied by LENGTH, read from the config itself
    python - "$1" "$length" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
k = int(sys.argv[2])
train, loss = cfg["train"], cfg.get("loss", {})
print(f"train.iterations={train['iterations'] * k}")
print("train.lr_steps=[" + ",".join(str(s * k) for s in train.get("lr_steps", [])) + "]")
for key in ("start_warm", "end_warm"):
    if key in loss:
        print(f"loss.{key}={loss[key] * k}")
PY
}
# through a variable, not <(...): a failed read of a config must stop the script under set -e
text=$(stretch configs/lite2_stage1.yaml); mapfile -t stage1 <<< "$text"
text=$(stretch configs/lite2_stage2.yaml); mapfile -t stage2 <<< "$text"
if [[ $data == v1 ]]; then
    # overrides address data.sources by position, so find the DAVIS source in each config (a key set
    # on another kind of source would be ignored silently)
    text=$(python - configs/lite2_stage1.yaml configs/lite2_stage2.yaml <<'PY'
import sys, yaml
from pcvos.eval.protocol import REPORT_UNSEEN_BY_V1, SPLITS
every = sorted(s for names in SPLITS.values() for s in names)
def davis_index(path, kind):
    found = [i for i, s in enumerate(yaml.safe_load(open(path))["data"]["sources"]) if s.get("type") == kind]
    if len(found) != 1:
        sys.exit(f"backbones_train.sh: {path}: expected one source of type {kind}, found {len(found)}")
    return found[0]
print(f"data.sources.{davis_index(sys.argv[1], 'davis_frames')}.exclude=[" + ",".join(REPORT_UNSEEN_BY_V1) + "]")
print(f"data.sources.{davis_index(sys.argv[2], 'davis')}.sequences=["
      + ",".join(s for s in every if s not in REPORT_UNSEEN_BY_V1) + "]")
PY
)
    mapfile -t v1 <<< "$text"
    stage1+=("${v1[0]}"); stage2+=("${v1[1]}")
fi

run_stage() {  # config, name, extra overrides...
    local config=$1 name=$2; shift 2
    if [[ -f runs/$name/model_final.pth ]]; then
        echo "$name: done already"; return
    fi
    local resume=()
    [[ -f runs/$name/checkpoints/latest.pth ]] && resume=(--resume)
    local threads=()
    [[ -n ${THREADS:-} ]] && threads=(threads="$THREADS")
    python -m pcvos train --config "$config" name="$name" seed="$seed" "$@" "${threads[@]}" "${resume[@]}"
}

run_stage configs/lite2_stage1.yaml "${tag}_stage1" model.backbone="$backbone" "${stage1[@]}"
run_stage configs/lite2_stage2.yaml "${tag}_stage2" init.checkpoint="runs/${tag}_stage1/model_final.pth" \
    "${stage2[@]}"
exit
}
