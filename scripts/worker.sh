#!/usr/bin/env bash
# `make worker`: one Celery worker per visible GPU, each pinned to its GPU and running one task at a time, or one
# CPU worker when the machine has no GPU. Stays in the foreground until its workers have exited.
#
# Environment (all optional):
#   NAS_GPU_QUEUE, NAS_CPU_QUEUE  the queue names, as the web server uses them (default gpu, cpu)
#   NAS_WORKER_QUEUES   the queues each worker here consumes (default "$NAS_GPU_QUEUE,$NAS_CPU_QUEUE"; e.g. "gpu"
#                       keeps the GPUs for training, "cpu" makes a machine take only the CPU work)
#   CUDA_VISIBLE_DEVICES  when set, the GPUs to use (comma-separated) instead of every GPU `nvidia-smi -L` lists;
#                       set but empty: no GPU, start the CPU worker
#   CONCURRENCY         tasks at once on the CPU worker (default 1; a GPU worker always runs one)
#   NAS_TORCH_THREADS   CPU threads per worker for PyTorch (sets OMP_NUM_THREADS and MKL_NUM_THREADS); default:
#                       PyTorch's own choice, one per core
#   NAS_WORKER_ARGS     more `celery worker` options, split on spaces, e.g. "--max-tasks-per-child=100"
#   NAS_PYTHON          the interpreter (default .venv/bin/python when it exists, else python3)
#   NAS_WORKER_DRY_RUN  1: print the worker commands, one a line, and start nothing
#
# A first SIGTERM or SIGINT asks every worker for a warm shutdown (finish the running task, take no new one); a
# second asks for a cold one (abandon it; the unacknowledged task goes back to the queue). If one worker exits
# on its own, the others are stopped the same way and the script exits with that worker's status, so whatever
# supervises it (systemd, Docker's restart policy) starts them all again.
set -euo pipefail
cd "$(dirname "$0")/.."

gpu_queue="${NAS_GPU_QUEUE:-gpu}"
cpu_queue="${NAS_CPU_QUEUE:-cpu}"
queues="${NAS_WORKER_QUEUES:-$gpu_queue,$cpu_queue}"
if [ -n "${NAS_PYTHON:-}" ]; then py="$NAS_PYTHON"
elif [ -x .venv/bin/python ]; then py=.venv/bin/python
else py=python3
fi
read -r -a extra_args <<< "${NAS_WORKER_ARGS:-}"
if [ -n "${NAS_TORCH_THREADS:-}" ]; then
  export OMP_NUM_THREADS="$NAS_TORCH_THREADS" MKL_NUM_THREADS="$NAS_TORCH_THREADS"
fi

# The GPUs to start a worker on, one a line: the owner's choice, else what the driver lists, else what PyTorch
# sees (a machine with the CUDA runtime but no nvidia-smi).
gpus() {
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | tr -d ' ' | grep -v -e '^$' -e '^-1$' || true
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | sed -n 's/^GPU \([0-9][0-9]*\):.*/\1/p' || true
  else
    local count
    count=$("$py" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
    [ "$count" -gt 0 ] 2>/dev/null && seq 0 $((count - 1)) || true
  fi
}

celery=("$py" -m celery -A webapp worker --loglevel=INFO)
names=() devices=() commands=()
mapfile -t gpu_list < <(gpus)
if [ "${#gpu_list[@]}" -gt 0 ]; then
  for i in "${!gpu_list[@]}"; do
    gpu="${gpu_list[$i]}"
    [[ "$gpu" =~ ^[0-9]+$ ]] && label="$gpu" || label="$i"  # a GPU named by UUID gets its position
    names+=("gpu$label") devices+=("$gpu")
    commands+=("${celery[*]} --concurrency=1 -n gpu$label@%h -Q $queues ${extra_args[*]}")
  done
else
  names+=(cpu) devices+=("")
  commands+=("${celery[*]} --concurrency=${CONCURRENCY:-1} -n cpu@%h -Q $queues ${extra_args[*]}")
fi

if [ "${NAS_WORKER_DRY_RUN:-0}" = 1 ]; then
  for i in "${!commands[@]}"; do
    prefix=""
    [ -n "${devices[$i]}" ] && prefix="CUDA_VISIBLE_DEVICES=${devices[$i]} "
    [ -n "${NAS_TORCH_THREADS:-}" ] && prefix+="OMP_NUM_THREADS=$NAS_TORCH_THREADS MKL_NUM_THREADS=$NAS_TORCH_THREADS "
    echo "$prefix${commands[$i]}" | sed 's/ *$//'
  done
  exit 0
fi

# Prefixes each line of a worker's output with its name when several share the terminal. It ignores the
# signals so that a Ctrl-C, which reaches the whole process group, cannot cut off a worker's last words.
label_lines() {
  trap '' INT TERM
  while IFS= read -r line; do printf '[%s] %s\n' "$1" "$line"; done
}

pids=()
signals=0
stop_workers() {  # SIGTERM: warm shutdown; SIGQUIT: cold
  for pid in "${pids[@]}"; do kill -"$1" "$pid" 2>/dev/null || true; done
}
on_signal() {
  signals=$((signals + 1))
  if [ "$signals" -eq 1 ]; then
    echo "Stopping the workers once their running tasks finish (signal again to abandon them)." >&2
    stop_workers TERM
  else
    stop_workers QUIT
  fi
}
trap on_signal INT TERM
# Job control puts each worker in a process group of its own, so a Ctrl-C reaches only this script, which
# passes it on once as SIGTERM (Celery would take a SIGINT followed by our SIGTERM as a second Ctrl-C).
set -m

for i in "${!commands[@]}"; do
  [ "$signals" -eq 0 ] || break  # stopped while starting
  read -r -a argv <<< "${commands[$i]}"
  if [ -n "${devices[$i]}" ]; then
    env_cmd=(env "CUDA_VISIBLE_DEVICES=${devices[$i]}")
  else
    env_cmd=(env)
  fi
  if [ "${#commands[@]}" -gt 1 ]; then
    "${env_cmd[@]}" "${argv[@]}" > >(label_lines "${names[$i]}") 2>&1 &
  else
    "${env_cmd[@]}" "${argv[@]}" &
  fi
  pids+=($!)
  echo "Started worker ${names[$i]} (pid $!${devices[$i]:+, CUDA_VISIBLE_DEVICES=${devices[$i]}}) on queues $queues." >&2
done

status=0
while :; do
  alive=0 exited=""
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then alive=1; else exited="${exited:-$pid}"; fi
  done
  if [ -n "$exited" ] && [ "$signals" -eq 0 ]; then
    wait "$exited" || status=$?
    echo "A worker (pid $exited) exited on its own (status $status); stopping the others." >&2
    signals=1
    stop_workers TERM
  fi
  [ "$alive" -eq 1 ] || break
  sleep 1 & wait $! 2>/dev/null || true  # a background sleep, so a signal is handled at once
done
for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
exit "$status"
