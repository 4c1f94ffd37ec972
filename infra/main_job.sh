#!/usr/bin/env bash
# The main job: services up, the pretrain-eval deployment served, one flow run per method through the
# Prefect server, then a comparison table and the URLs. Run by `make demo` after `make install`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
NAME=${FLAIR_DEPLOYMENT:-cpu}
METHODS=${FLAIR_METHODS:-$($PY -m flair_cli methods --names | tr '\n' ' ')}  # default: every registered method
ROOT=${FLAIR_SERVICES_ROOT:-.services}
# Flow runs at a time, each training on its share of the cores: at these widths one thread per run, two runs
# side by side, beat one run on two threads after the other (docs/benchmarks.md, "The main job").
CORES=$(nproc)
PARALLEL=${FLAIR_PARALLEL:-$(( CORES >= 2 ? 2 : 1 ))}
THREADS=$(( CORES / PARALLEL > 0 ? CORES / PARALLEL : 1 ))
export DVC_NO_ANALYTICS=1
export PATH="$PWD/.venv/bin:$PATH"  # DVC stages and the deployment call `flair`, `dvc` and `prefect`

# Ctrl-C or SIGTERM stops everything this job started, the services included, and leaves no process behind.
# Long steps run in the background under `wait`, which a signal interrupts (a foreground command would delay
# the trap until it ended); the served deployment has its own process group, so one kill reaches its flow runs
# and their training and evaluation processes (torchrun stops its own workers on SIGTERM).
serve_pid="" step_pid="" run_pids=()
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
  [ -z "$step_pid" ] || kill -TERM "$step_pid" 2>/dev/null || true  # set -e holds in a trap too
  # Each watcher subshell before its `prefect deployment run`: a subshell that outlives its child reports the
  # child's death with a bare "Terminated" on our stderr, after the line above.
  local pid children
  for pid in "${run_pids[@]}"; do
    children=$(pgrep -P "$pid" || true)
    kill -TERM "$pid" 2>/dev/null || true
    [ -z "$children" ] || kill -TERM $children 2>/dev/null || true
  done
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
# The runner asks for scheduled flow runs every 2 s (Prefect's default 10 s), and each watcher polls every 2 s:
# when a flow run ends, the next one starts within seconds instead of ~20.
PREFECT_RUNNER_POLL_FREQUENCY=2 setsid $PY -m flows.pretrain_eval serve --name "$NAME" > "$ROOT/logs/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 120); do
  .venv/bin/prefect deployment inspect "pretrain-eval/$NAME" > /dev/null 2>&1 && break
  kill -0 "$serve_pid" 2>/dev/null || { echo "serving pretrain-eval/$NAME failed: see $ROOT/logs/serve.log"; exit 1; }
  sleep 1
done

echo "services and deployment up after $(( $(date +%s) - start )) s"
# Up to PARALLEL flow runs at once, each watched in the background; a new one starts when one ends. Each run's
# output goes to its own log, printed when it ends, so that the runs' lines do not interleave.
run_method() {
  local log="$ROOT/logs/main-job-$1.log" rc=0
  .venv/bin/prefect deployment run "pretrain-eval/$NAME" -p method="$1" -p threads="$THREADS" --watch --watch-interval 2 \
    > "$log" 2>&1 || rc=$?
  echo "== pretrain-eval/$NAME method=$1: exit $rc, $(( $(date +%s) - start )) s into the job"; cat "$log"
  return $rc
}
failed=0
reap_one() {  # wait for one of the running flow runs and drop it from run_pids
  local done_pid="" pid kept=()
  wait -n -p done_pid "${run_pids[@]}" || failed=1
  for pid in "${run_pids[@]}"; do [ "$pid" = "$done_pid" ] || kept+=("$pid"); done
  run_pids=("${kept[@]}")
}
# Longest flow runs first (at the tuned recipes DreamLIP ~560 s, FILIP ~480 s, FLAIR and CLIP ~360 s each:
# docs/benchmarks.md), so each lane ends with a short run and neither core idles long at the end; the table keeps
# the registry's order.
FIRST=${FLAIR_FIRST_METHODS:-dreamlip filip}
LAUNCH=""
for m in $FIRST; do if [[ " $METHODS " == *" $m "* ]]; then LAUNCH+="$m "; fi; done
for m in $METHODS; do if [[ " $FIRST " != *" $m "* ]]; then LAUNCH+="$m "; fi; done
for method in $LAUNCH; do
  while [ "${#run_pids[@]}" -ge "$PARALLEL" ]; do reap_one; done
  run_method "$method" &
  run_pids+=($!)
done
while [ "${#run_pids[@]}" -gt 0 ]; do reap_one; done
[ "$failed" = 0 ] || { echo "a flow run failed: see its output above"; exit 1; }

$PY -m dashboard.serve start --root "$ROOT"
$PY -m flair_lab.main_job_table --methods $METHODS
echo "main job took $(( $(date +%s) - start )) s"
$PY -m services status --root "$ROOT"
echo "Open the dashboard at http://127.0.0.1:8501 (Compare, Paper, Study, Sweeps, Registry, Runs, Inspect);"
echo "from another machine: ssh -L 8501:127.0.0.1:8501 <this host>. Stop everything with: make services-down"
