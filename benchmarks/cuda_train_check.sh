#!/usr/bin/env bash
# Training on a lent CUDA machine, in one go: the tiny config with AMP (20 iterations, then
# resumed to 30), DDP through torchrun on one GPU (NCCL), and the step time of the paper's stage-2
# setting (batch 8, 384x384 crops, reference + 2 clips of 3 frames, AMP) on generated 480p videos.
#   bash benchmarks/cuda_train_check.sh [WORKDIR]
set -u
run=${1:-/tmp/pcvos_train}
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
last() { $py -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(len(r), 'records; last:', {k: round(v, 4) for k, v in r[-1].items()})" "$1"; }
echo "== tiny, CUDA, AMP: 20 iterations, then resumed to 30"
timeout 120 $py -m pcvos train -c configs/tiny.yaml -o "$run/tiny" device=cuda train.iterations=20 &&
  timeout 60 $py -m pcvos train -c configs/tiny.yaml -o "$run/tiny" device=cuda train.iterations=30 --resume &&
  last "$run/tiny/history.jsonl"
echo "== tiny, DDP through torchrun (1 GPU, NCCL)"
timeout 120 $py -m torch.distributed.run --standalone --nproc_per_node 1 -m pcvos.train -c configs/tiny.yaml \
  -o "$run/ddp" device=cuda train.iterations=10 &&
  $py -c "import json,sys; s=json.load(open(sys.argv[1])); print('world size', s['world_size'], 'iterations', s['iterations'])" "$run/ddp/summary.json"
echo "== paper stage 2 step time on generated 480p videos"
timeout ${STAGE2_LIMIT:-240} $py -m pcvos train -c configs/paper_stage2_video.yaml -o "$run/stage2" init.checkpoint=null \
  'data.sources=[{type: synthetic, num_videos: 64, num_frames: 40, size: [480, 854], max_objects: 3, seed: 0}]' \
  train.iterations=${STAGE2_ITERS:-60} train.log_every=10 train.save_every=0 train.progress=false val.every=0 \
  data.num_workers=${WORKERS:-8} device=cuda &&
  $py -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print('s/it by window of 10:', [round(x['s_per_it'], 3) for x in r])" "$run/stage2/history.jsonl"
