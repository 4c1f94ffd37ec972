#!/usr/bin/env bash
# The platform image and (later) the compose stack with podman, on a machine without an image registry.
#
#   infra/containers.sh setup   # podman + runc + debootstrap from Debian, and the two engine settings this
#                               # kind of machine needs (root; once)
#   infra/containers.sh base    # the base image from Debian's packages, if missing
#   infra/containers.sh build   # the platform image, if the Dockerfile, its constraints, pyproject.toml or
#                               # the code changed; prints its size and the build time
#   infra/containers.sh up      # the compose stack (podman-compose), then waits until every service is healthy
#   infra/containers.sh down    # stops and removes the containers; the named volumes (registry, runs) stay
#   infra/containers.sh lock    # infra/docker/constraints.txt from the tested .venv (pip freeze)
#
# Docker users build the same Dockerfile from python:3.11-slim and PyTorch's index (infra/README.md). Here
# the base comes from debootstrap, and pip reads this machine's local package mirrors (/opt/pypi*), mounted
# into the build read-only, besides PyPI.
set -euo pipefail

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
        flair_cli flows services dashboard params | xargs -0 sha256sum 2> /dev/null | sha256sum | cut -c1-12)
}

build() {
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
PROJECT=flair-lab
HEALTHY=(seaweedfs mlflow prefect dashboard)  # the services with a health check

# podman-compose from PyPI (the dev extra puts it in .venv)
PODMAN_COMPOSE=${PODMAN_COMPOSE:-$(command -v podman-compose || echo "$ROOT/.venv/bin/podman-compose")}

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

# podman runs health checks from systemd timers, which this machine does not have: run them here until
# every service answers.
wait_healthy() {
    local deadline=$((SECONDS + ${1:-300})) service
    for service in "${HEALTHY[@]}"; do
        until podman healthcheck run "${PROJECT}_${service}_1" > /dev/null 2>&1; do
            if ((SECONDS > deadline)); then
                say "$service is not healthy; its last lines:"
                podman logs --tail 5 "${PROJECT}_${service}_1" >&2 || true
                exit 1
            fi
            sleep 2
        done
    done
}

up() {
    local tag start
    tag=$(build)
    env_file
    start=$SECONDS
    FLAIR_IMAGE=$tag compose up --detach --no-build >&2
    wait_healthy 600
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
    *) echo "usage: $0 setup|base|build|up|down|lock" >&2; exit 2 ;;
esac
