#!/usr/bin/env bash
# The main job: services up, the pretrain-eval deployment served, one flow run per method through the
# Prefect server, then a comparison table and the URLs. Run by `make demo` after `make install`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
NAME=${FLAIR_DEPLOYMENT:-cpu}
METHODS=${FLAIR_METHODS:-$($PY -m flair_cli methods --names | tr '\n' ' ')}  # default: every registered method
ROOT=${FLAIR_SERVICES_ROOT:-.services}
export DVC_NO_ANALYTICS=1
export PATH="$PWD/.venv/bin:$PATH"  # DVC stages and the deployment call `flair`, `dvc` and `prefect`

# Ctrl-C or SIGTERM stops everything this job started, the services included, and leaves no process behind.
# Long steps run in the background under `wait`, which a signal interrupts (a foreground command would delay
# the trap until it ended); the served deployment has its own process group, so one kill reaches its flow runs
# and their training and evaluation processes (torchrun stops its own workers on SIGTERM).
serve_pid="" step_pid=""
stop_serving() {
  [ -n "$serve_pid" ] || return 0
  kill -TERM -- "-$serve_pid" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 -- "-$serve_pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$serve_pid" 2>/dev/null || true
  serve_pid=""
}
on_signal() {
  trap - INT TERM
  echo "main job interrupted: stopping its flow runs, the dashboard and the services" >&2
  [ -n "$step_pid" ] && kill -TERM "$step_pid" 2>/dev/null
  stop_serving
  $PY -m dashboard.serve stop --root "$ROOT" > /dev/null 2>&1 || true
  $PY -m services stop --root "$ROOT" > /dev/null
  exit 130
}
trap on_signal INT TERM
trap stop_serving EXIT  # a serve process left running while the server stops hangs the shutdown
step() { "$@" & step_pid=$!; wait "$step_pid"; local rc=$?; step_pid=""; return $rc; }

start=$(date +%s)
step $PY -m services start --root "$ROOT"
eval "$($PY -m services env --root "$ROOT")"

mkdir -p "$ROOT/logs"
setsid $PY -m flows.pretrain_eval serve --name "$NAME" > "$ROOT/logs/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 120); do
  .venv/bin/prefect deployment inspect "pretrain-eval/$NAME" > /dev/null 2>&1 && break
  kill -0 "$serve_pid" 2>/dev/null || { echo "serving pretrain-eval/$NAME failed: see $ROOT/logs/serve.log"; exit 1; }
  sleep 1
done

for method in $METHODS; do
  echo "== pretrain-eval/$NAME method=$method"
  step .venv/bin/prefect deployment run "pretrain-eval/$NAME" -p method="$method" --watch
done

$PY -m dashboard.serve start --root "$ROOT"
$PY -m flows.report --methods $METHODS
echo "main job took $(( $(date +%s) - start )) s"
$PY -m services status --root "$ROOT"
echo "Open the dashboard at http://127.0.0.1:8501 (Compare, Paper, Sweeps, Registry, Inspect);"
echo "from another machine: ssh -L 8501:127.0.0.1:8501 <this host>. Stop everything with: make services-down"
