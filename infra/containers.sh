#!/usr/bin/env bash
# The platform image and the compose stack with podman, on a machine without an image registry.
#
#   infra/containers.sh setup   # podman + runc + debootstrap from Debian, and the two engine settings this
#                               # kind of machine needs (root; once)
#   infra/containers.sh base    # the base image from Debian's packages, if missing
#   infra/containers.sh build   # the platform image, if the Dockerfile, its constraints, pyproject.toml or
#                               # the code changed; prints its size and the build time
#   infra/containers.sh up      # the compose stack (podman-compose), then waits until every service is healthy
#   infra/containers.sh down    # stops and removes the containers; the named volumes (registry, runs) stay
#   infra/containers.sh purge   # and the volumes
#   infra/containers.sh lock    # infra/docker/constraints.txt from the tested .venv (pip freeze)
#
# PROJECT (default flair-lab) names the containers and volumes; FLAIR_IMAGE skips the build.
#
# Docker users build the same Dockerfile from python:3.11-slim and PyTorch's index (infra/README.md). Here
# the base comes from debootstrap, and pip reads this machine's local package mirrors (/opt/pypi*), mounted
# into the build read-only, besides PyPI.
set -euo pipefail
shopt -s extglob

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_IMAGE=${BASE_IMAGE:-localhost/flair-lab-base:bookworm-py311}
IMAGE=${IMAGE:-localhost/flair-lab}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Packages the base needs beyond minbase: Python 3.11 with venv (for the image's /opt/venv), git (lineage,
# DVC), passwd (useradd), CA certificates (pip over HTTPS).
BASE_PACKAGES=python3,python3-venv,git,passwd,ca-certificates

say() { printf 'containers: %s\n' "$*" >&2; }

setup() {
    local missing=()
    for tool in podman runc debootstrap; do command -v "$tool" > /dev/null || missing+=("$tool"); done
    if ((${#missing[@]})); then
        say "installing ${missing[*]} from Debian"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap > /dev/null
    fi
    # crun fails on this kind's hybrid cgroups and setrlimit is not permitted (../shared/STACK.md)
    local conf=/etc/containers/containers.conf
    if ! grep -qs 'cgroup_manager = "cgroupfs"' "$conf"; then
        say "writing $conf (runc, cgroupfs, no default ulimits)"
        mkdir -p "$(dirname "$conf")"
        printf '[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n' > "$conf"
    fi
}

base() {
    if podman image exists "$BASE_IMAGE"; then
        say "base $BASE_IMAGE exists"
        return
    fi
    local dir start
    dir=$(mktemp -d)
    start=$SECONDS
    say "debootstrap bookworm ($BASE_PACKAGES) from $DEBIAN_MIRROR"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$dir/root" "$DEBIAN_MIRROR" > "$dir/log" \
        || { tail -5 "$dir/log" >&2; rm -rf "$dir"; exit 1; }
    # This machine reaches package registries through a TLS-intercepting proxy: the base trusts what the
    # machine trusts, and pip (which otherwise reads its own bundle) is told so.
    cp /etc/ssl/certs/ca-certificates.crt "$dir/root/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$dir/root/etc/pip.conf"
    tar -C "$dir/root" -cf "$dir/base.tar" .
    podman import --quiet "$dir/base.tar" "$BASE_IMAGE" > /dev/null
    rm -rf "$dir"
    say "base $BASE_IMAGE made in $((SECONDS - start)) s"
}

# The image is rebuilt only when what goes into it changed: the tag is a hash of the Dockerfile, the
# dependency declaration and pins, and the code as it is in the working tree (edits included), so an
# unchanged checkout finds its image.
image_tag() {
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- infra/docker pyproject.toml flair_core \
        flair_cli flair_lab flows services dashboard params | xargs -0 sha256sum 2> /dev/null | sha256sum | cut -c1-12)
}

build() {
    # one build at a time: a second caller (the container test, while the build started at the beginning of
    # the test session still runs) waits here, then finds the image
    exec 9> "${TMPDIR:-/tmp}/flair-lab-image-build.lock"
    flock 9
    base
    local tag start mounts=()
    tag="$IMAGE:$(image_tag)"
    if podman image exists "$tag"; then
        say "image $tag exists (nothing it is built from changed)"
        echo "$tag"
        return
    fi
    local extra=""
    for mirror in /opt/pypi /opt/pypi-more; do
        if [[ -d $mirror/simple ]]; then
            mounts+=(--volume "$mirror:$mirror:ro")
            extra+="file://$mirror/simple "
        fi
    done
    start=$SECONDS
    say "building $tag from $BASE_IMAGE"
    podman build --file "$ROOT/infra/docker/Dockerfile" --ignorefile "$ROOT/infra/docker/Dockerfile.dockerignore" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
        --build-arg PIP_EXTRA_INDEX_URL="${extra% }" "${mounts[@]}" --tag "$tag" --tag "$IMAGE:latest" "$ROOT" >&2
    # earlier builds of the platform image share most layers, but not the last ones: drop their tags
    podman images --format '{{.Repository}}:{{.Tag}}' "$IMAGE" | grep -vxF -e "$tag" -e "$IMAGE:latest" \
        | xargs -r podman rmi > /dev/null 2>&1 || true
    podman image prune --force > /dev/null
    local size
    size=$(podman image inspect --format '{{.Size}}' "$tag")
    say "built $tag in $((SECONDS - start)) s, $((size / 1000000)) MB"
    echo "$tag"
}

ENV_FILE=${ENV_FILE:-$ROOT/infra/.env}
PROJECT=${PROJECT:-flair-lab}

# podman-compose from PyPI and a Python with PyYAML: the dev extra puts both in .venv
PODMAN_COMPOSE=${PODMAN_COMPOSE:-$(command -v podman-compose || echo "$ROOT/.venv/bin/podman-compose")}
PYTHON=${PYTHON:-$( [[ -x $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || command -v python)}

compose() {
    "$PODMAN_COMPOSE" --project-name "$PROJECT" --file "$ROOT/infra/compose.yaml" --env-file "$ENV_FILE" "$@"
}

# infra/.env: the S3 identity (fresh random keys) and the uid that owns the bind-mounted checkout's files.
env_file() {
    [[ -f $ENV_FILE ]] && return
    say "writing $ENV_FILE (new S3 keys)"
    (umask 077 && printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nFLAIR_UID=%s\n' \
        "flair$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')" "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
        "$(id -u)" > "$ENV_FILE")
}

# compose.yaml's depends_on as start stages, each service with what its dependents wait for: "healthy"
# (it has a health check), "completed" (a one-shot job) or "started".
stages() {
    "$PYTHON" - "$ROOT/infra/compose.yaml" <<'PY'
import sys, yaml
services = yaml.safe_load(open(sys.argv[1]))["services"]
conditions = {dep: spec.get("condition", "service_started") for s in services.values()
              for dep, spec in (s.get("depends_on") or {}).items()}
done = set()
while len(done) < len(services):
    stage = [name for name, s in services.items() if name not in done and set(s.get("depends_on") or {}) <= done]
    if not stage:
        sys.exit(f"compose.yaml: depends_on has a cycle among {sorted(set(services) - done)}")
    wait = {"service_completed_successfully": "completed"}
    print(" ".join(f"{name}:{'healthy' if 'healthcheck' in services[name] else wait.get(conditions.get(name), 'started')}"
                   for name in stage))
    done |= set(stage)
PY
}

# Wait for one container: its health check passing (podman 4.3 runs health checks from systemd timers, which
# this machine lacks, so they are run from here), or a one-shot job's exit 0.
wait_for() {
    local container="${PROJECT}_$1_1" kind=$2 deadline=$((SECONDS + ${3:-600}))
    case $kind in
        healthy)
            until podman healthcheck run "$container" > /dev/null 2>&1; do
                if ((SECONDS > deadline)) || [[ $(podman inspect --format '{{.State.Status}}' "$container") == exited ]]; then
                    say "$1 did not become healthy; its last lines:"
                    podman logs --tail 5 "$container" >&2 || true
                    exit 1
                fi
                sleep 2
            done ;;
        completed)
            local code
            code=$(podman wait "$container")
            ((code == 0)) || { say "$1 exited with $code"; podman logs --tail 5 "$container" >&2; exit 1; } ;;
    esac
}

# podman 4.3 cannot enforce depends_on conditions (podman-compose ignores "service_healthy" there and its
# --requires links break when a one-shot job has exited), so the stack starts stage by stage from here.
up() {
    local tag start stage item all
    tag=${FLAIR_IMAGE:-$(build)}  # FLAIR_IMAGE: an image built elsewhere (the container test's)
    env_file
    mapfile -t all < <(stages)
    ((${#all[@]})) || { say "could not read the start order from infra/compose.yaml (with $PYTHON)"; exit 1; }
    start=$SECONDS
    for stage in "${all[@]}"; do
        # (podman's complaint that it cannot reach systemd for the health-check timers is filtered out)
        FLAIR_IMAGE=$tag compose up --detach --no-build --no-deps ${stage//:+([a-z])/} 2>&1 \
            | { grep -v "systemd connection" || true; } >&2
        for item in $stage; do
            wait_for "${item%%:*}" "${item##*:}"
        done
    done
    say "stack up and healthy in $((SECONDS - start)) s ($tag)"
}

case "${1:-}" in
    setup) setup ;;
    base) base ;;
    build) build ;;
    up) up ;;
    lock)  # the image's constraints: what the tested .venv resolved to
        { sed -n '1,2p' "$ROOT/infra/docker/constraints.txt"; "$ROOT/.venv/bin/pip" freeze --exclude-editable; } \
            > "$ROOT/infra/docker/constraints.txt.new" && mv "$ROOT/infra/docker/constraints.txt.new" "$ROOT/infra/docker/constraints.txt" ;;
    down) FLAIR_IMAGE=unused compose down >&2 ;;  # containers go, named volumes stay
    purge) FLAIR_IMAGE=unused compose down --volumes >&2 ;;  # volumes too: the registry, runs and objects
    *) echo "usage: $0 setup|base|build|up|down|purge|lock" >&2; exit 2 ;;
esac
