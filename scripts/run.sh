#!/usr/bin/env bash
# `make run`: migrate, make sure Redis is up, start one Celery worker and the web server; Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
# Local settings live in .env (git-ignored), written once: the server, the worker and every `manage.py` command
# in another terminal read the same DEBUG and SECRET_KEY from it.
if [ ! -f .env ]; then
  (umask 077 && printf 'DEBUG=1\nSECRET_KEY=%s\n' "$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))')" > .env)
  echo "Wrote local settings to .env (DEBUG on, a generated SECRET_KEY)."
fi
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
port="${PORT:-8000}"  # `PORT=8001 make run` when 8000 is taken
case "$port" in ''|*[!0-9]*) echo "PORT must be a number, not '$port'" >&2; exit 2 ;; esac
PY=.venv/bin/python
pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # The worker finishes its running task first (a warm shutdown). Whatever still runs after a minute is killed;
  # a trial it was training is then taken over from its checkpoint like a killed worker's.
  for _ in $(seq 60); do
    alive=""
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
    [ -z "$alive" ] && break
    sleep 1
  done
  for pid in $alive; do
    echo "process $pid did not stop within a minute: killed" >&2
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  echo "nasboard stopped."
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM  # Ctrl-C is the normal way to stop

redis_pid=$(scripts/ensure-redis.sh)
[ -n "$redis_pid" ] && { pids+=("$redis_pid"); echo "Started a local redis-server for this session ($REDIS_URL)."; }

$PY manage.py migrate --noinput
login=$($PY manage.py demo_user --url "http://127.0.0.1:$port/")
$PY -m celery -A webapp worker --loglevel=INFO --concurrency=1 -Q "${NAS_GPU_QUEUE:-gpu},${NAS_CPU_QUEUE:-cpu}" &
pids+=($!)
$PY manage.py runserver "127.0.0.1:$port" --noreload &
pids+=($!)
sleep 2
echo
echo "============================================================================"
echo " nasboard is running at http://127.0.0.1:$port/  (Ctrl-C stops everything)"
echo " $login"
echo "============================================================================"
status=0
wait -n "${pids[@]}" || status=$?  # a Ctrl-C runs the INT trap right here and ends with status 0
echo "A process of nasboard stopped on its own (exit status $status); stopping the rest." >&2
exit "$status"
