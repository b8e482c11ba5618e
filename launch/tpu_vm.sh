#!/usr/bin/env bash
# A TPU VM pod slice: the same command on every worker over `gcloud ... ssh --worker=all`.
# JAX finds the pod's workers itself; VLPJAX_AUTO_CLUSTER=1 tells vlpjax to join them.
# The repository and its .venv must be at REMOTE_DIR on every worker (e.g. a shared disk).
#
#   TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_vm.sh .venv/bin/vlpjax train --config configs/clip_shapes.py --workdir gs://bucket/run
#   DRY_RUN=1 TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_vm.sh vlpjax train ...   # print the gcloud command only
set -euo pipefail
if [[ $# -eq 0 || -z ${TPU_NAME:-} || -z ${ZONE:-} ]]; then
  echo "usage: TPU_NAME=NAME ZONE=ZONE [PROJECT=P] [REMOTE_DIR=~/vlpjax] $0 COMMAND..." >&2
  exit 2
fi
remote="cd ${REMOTE_DIR:-~/vlpjax} && VLPJAX_AUTO_CLUSTER=1 $(printf '%q ' "$@")"
command=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$remote")
if [[ -n ${PROJECT:-} ]]; then
  command+=(--project="$PROJECT")
fi
if [[ ${DRY_RUN:-0} == 1 ]]; then
  printf '%q ' "${command[@]}"
  echo
  exit 0
fi
exec "${command[@]}"
