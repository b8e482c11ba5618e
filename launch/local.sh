#!/usr/bin/env bash
# Run COMMAND as N processes of one job on this machine (127.0.0.1), each with LOCAL_DEVICES
# simulated CPU devices, joined by jax.distributed over gloo:
#
#   LOCAL_DEVICES=4 launch/local.sh 2 vlpjax train --config configs/clip_shapes.py:tiny --workdir w
#
# Each process reads VLPJAX_COORDINATOR, VLPJAX_NUM_PROCESSES and VLPJAX_PROCESS_ID; its output
# lines are prefixed with "[i] ". When one process fails the others are stopped, and the script
# exits with that process's status. DRY_RUN=1 prints the commands instead of running them.
set -uo pipefail

if [[ $# -lt 2 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: [LOCAL_DEVICES=4] [PORT=...] [DRY_RUN=1] $0 N COMMAND..." >&2
  exit 2
fi
processes=$1
shift
local_devices=${LOCAL_DEVICES:-4}
# Seconds between the TERM and the KILL that stop the others when one process fails: a stopping
# process finishes its step and its checkpoint save in them.
stop_grace=${STOP_GRACE_S:-30}
if [[ ! $stop_grace =~ ^[0-9]+$ ]]; then
  echo "STOP_GRACE_S=$stop_grace is not a whole number of seconds" >&2
  exit 2
fi
port=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

if [[ ${DRY_RUN:-0} == 1 ]]; then
  for ((i = 0; i < processes; i++)); do
    echo "XLA_FLAGS=--xla_force_host_platform_device_count=$local_devices JAX_PLATFORMS=cpu" \
      "VLPJAX_COORDINATOR=127.0.0.1:$port VLPJAX_NUM_PROCESSES=$processes VLPJAX_PROCESS_ID=$i $*"
  done
  exit 0
fi

set -m  # each process in its own process group, so stopping it stops its children too
pids=()
for ((i = 0; i < processes; i++)); do
  (
    export XLA_FLAGS="--xla_force_host_platform_device_count=$local_devices" JAX_PLATFORMS=cpu
    export VLPJAX_COORDINATOR="127.0.0.1:$port" VLPJAX_NUM_PROCESSES="$processes" VLPJAX_PROCESS_ID="$i"
    "$@" 2>&1 | sed -u "s/^/[$i] /"
    exit "${PIPESTATUS[0]}"
  ) &
  pids+=("$!")
done

# TERM, then KILL after a grace period: in a job of several processes JAX catches SIGTERM itself
# (a preemption notice) and a process waiting in a collective for a dead peer would not stop.
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
  for ((i = 0; i < stop_grace * 10; i++)); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
}
trap 'stop_all; exit 130' INT TERM

status=0
for ((left = processes; left > 0; left--)); do
  wait -n -p finished
  rc=$?
  if [[ $rc -ne 0 && $status -eq 0 ]]; then
    status=$rc
    for i in "${!pids[@]}"; do [[ ${pids[$i]} == "$finished" ]] && failed=$i; done
    echo "launch/local.sh: process ${failed:-?} of $processes exited with status $rc; stopping the others" >&2
    stop_all
  fi
done
exit "$status"
