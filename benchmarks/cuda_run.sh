#!/usr/bin/env bash
# The GPU checks and timings of one session on a lent CUDA machine, in one go: parity and
# precision tests on CUDA, then speed.py (fp32 and fp16, 1 and 3 objects) and stages.py.
#   bash benchmarks/cuda_run.sh OUTDIR [DAVIS_ROOT]
# Each step has its own time limit, so a slow step leaves the others' results in OUTDIR.
set -u
out=${1:?usage: cuda_run.sh OUTDIR [DAVIS_ROOT]}
data=${2:-../shared/data/davis2016-train}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== tests on CUDA"
timeout 100 $py -m pytest -q -p no:cacheprovider tests/test_parity.py tests/test_precision.py tests/test_api.py 2>&1 | tail -6
echo "== end to end: pcvos segment on DAVIS bear (shipped model), CUDA against CPU, fp32 and fp16"
seq="$data/JPEGImages/480p/bear"; ann="$data/Annotations/480p/bear"
for run in "cuda fp32" "cuda fp16" "cpu fp32"; do
  set -- $run
  timeout 90 $py -m pcvos segment "$seq" --mask "$ann/00000.png" --device $1 --precision $2 --quiet \
    --overwrite --out "/tmp/e2e_$1_$2" || echo "segment on $1 $2 failed"
done
$py - "$ann" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
ann = Path(sys.argv[1])
def load(d):
    return np.stack([np.array(Image.open(f)) for f in sorted(Path(d).glob("*.png"))])
gt = load(ann) > 0
ref = load("/tmp/e2e_cpu_fp32") > 0
for name in ("cuda_fp32", "cuda_fp16", "cpu_fp32"):
    out = load(f"/tmp/e2e_{name}") > 0
    iou = [((o & g).sum() / max((o | g).sum(), 1)) for o, g in zip(out[1:], gt[1:])]
    print(f"{name}: {len(out)} frames, pixels equal to CPU fp32 {100 * (out == ref).mean():.4f}%, "
          f"mean IoU vs ground truth {np.mean(iou):.4f}")
PY
frames=${FRAMES:-75}
for prec in fp32 fp16; do
  echo "== speed $prec"
  timeout ${SPEED_LIMIT:-130} $py benchmarks/speed.py --device cuda --frames "$frames" --repeats 3 --objects 1 3 \
    --precision $prec --data "$data" --json "$out/speed_cuda_$prec.json" --plot "$out/speed_cuda_$prec.png" \
    2>"$out/speed_cuda_$prec.log"
done
echo "== stages fp32"
timeout 60 $py benchmarks/stages.py --device cuda --frames "$frames" --lengths 5 10 25 --data "$data" 2>&1
