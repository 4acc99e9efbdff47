#!/usr/bin/env bash
# Exits 0 if a Redis answers at $REDIS_URL (default redis://127.0.0.1:6379/0); otherwise starts a throwaway
# redis-server there (data in a temporary folder, nothing saved) when one is installed; otherwise explains.
# Prints the PID of a server it started on stdout (nothing if one was already running).
set -euo pipefail
cd "$(dirname "$0")/.."
url="${REDIS_URL:-redis://127.0.0.1:6379/0}"
ping() { .venv/bin/python -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()" "$url" >/dev/null 2>&1; }
ping && exit 0
if ! command -v redis-server >/dev/null 2>&1; then
  echo "No Redis at $url and redis-server is not installed: install Redis (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) or set REDIS_URL." >&2
  exit 1
fi
read -r host port < <(.venv/bin/python -c "from urllib.parse import urlparse; import sys; u=urlparse(sys.argv[1]); print(u.hostname or '127.0.0.1', u.port or 6379)" "$url")
dir=$(mktemp -d -t nasboard-redis.XXXXXX)
redis-server --bind "$host" --port "$port" --dir "$dir" --save "" --appendonly no --daemonize no >"$dir/redis.log" 2>&1 &
pid=$!
for _ in $(seq 50); do ping && { echo "$pid"; exit 0; }; sleep 0.1; done
echo "Started redis-server on $host:$port but it does not answer; see $dir/redis.log" >&2
exit 1
