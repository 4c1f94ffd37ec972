#!/usr/bin/env bash
# The main job: services up, the pretrain-eval deployment served, one flow run per method through the
# Prefect server, then a comparison table and the URLs. Run by `make demo` after `make install`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
NAME=${FLAIR_DEPLOYMENT:-cpu}
METHODS=${FLAIR_METHODS:-$($PY -m flair_core.cli methods --names | tr '\n' ' ')}  # default: every registered method
ROOT=${FLAIR_SERVICES_ROOT:-.services}
export DVC_NO_ANALYTICS=1
export PATH="$PWD/.venv/bin:$PATH"  # DVC stages and the deployment call `flair`, `dvc` and `prefect`

start=$(date +%s)
$PY -m services start --root "$ROOT"
eval "$($PY -m services env --root "$ROOT")"

# Serve the deployment in the background; stop it before anything else on exit (a serve process left
# running while the server stops hangs the shutdown).
mkdir -p "$ROOT/logs"
$PY -m flows.pretrain_eval serve --name "$NAME" > "$ROOT/logs/serve.log" 2>&1 &
serve_pid=$!
trap 'kill $serve_pid 2>/dev/null; wait $serve_pid 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  .venv/bin/prefect deployment inspect "pretrain-eval/$NAME" > /dev/null 2>&1 && break
  kill -0 $serve_pid 2>/dev/null || { echo "serving pretrain-eval/$NAME failed: see $ROOT/logs/serve.log"; exit 1; }
  sleep 1
done

for method in $METHODS; do
  echo "== pretrain-eval/$NAME method=$method"
  .venv/bin/prefect deployment run "pretrain-eval/$NAME" -p method="$method" --watch
done

$PY -m dashboard.serve start --root "$ROOT"
$PY -m flows.report --methods $METHODS
echo "main job took $(( $(date +%s) - start )) s"
$PY -m services status --root "$ROOT"
echo "Open the dashboard at http://127.0.0.1:8501 (Compare, Paper, Sweeps, Registry, Inspect);"
echo "from another machine: ssh -L 8501:127.0.0.1:8501 <this host>. Stop everything with: make services-down"
