#!/usr/bin/env bash
# The container image (Containerfile), built with podman. Idempotent: each step does only
# what is missing.
#
#   scripts/image.sh build          podman, runc and mmdebstrap where missing, the base, then
#                                   both images (make image); prints their sizes
#   scripts/image.sh base           the base image to build on, made when missing; prints it
#   scripts/image.sh sizes          each image's size
#   scripts/image.sh podman ARGS... podman ARGS with this project's configuration (below)
#
# The base: BASE (default docker.io/library/python:3.11-slim-bookworm, the official Python
# image), pulled when missing. When the default cannot be pulled (no image registry
# reachable), a stand-in is made from Debian's own packages: a bookworm minbase root file
# system with python3, python3-venv, ca-certificates and tzdata (mmdebstrap, about a
# minute), imported as localhost/quota-authority-base:bookworm; remove that image to make it
# again with the latest security updates. A BASE given explicitly is never replaced.
#
# The images: IMAGE (default localhost/quota-authority:latest), with the embedded
# PostgreSQL, and IMAGE_EXTERNAL_DB (default localhost/quota-authority:external-db),
# without it (EMBEDDED_POSTGRES=false): it needs QUOTA_AUTHORITY_DATABASE_URL.
#
# This machine's podman (Debian's 4.3, as root) runs containers with the project's own
# containers.conf in .image/, passed as CONTAINERS_CONF, so nothing in /etc changes:
#   - runc, not crun: crun refuses a cgroups v1/v2 hybrid mode;
#   - no default ulimits: setting them needs CAP_SYS_RESOURCE, which root may lack here.
# Storage: podman's default (overlay) when the kernel mounts an overlay under
# /var/lib/containers; else vfs (slower, larger), in a storage.conf passed as
# CONTAINERS_STORAGE_CONF.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.image"
OFFICIAL_BASE=docker.io/library/python:3.11-slim-bookworm
BASE="${BASE:-$OFFICIAL_BASE}"
LOCAL_BASE=localhost/quota-authority-base:bookworm
IMAGE="${IMAGE:-localhost/quota-authority:latest}"
IMAGE_EXTERNAL_DB="${IMAGE_EXTERNAL_DB:-localhost/quota-authority:external-db}"
# Where the stand-in base's packages come from: DEBIAN_SOURCES, a sources file (one-line or
# deb822) for bookworm; by default this machine's own Debian sources, which apt uses here.
DEBIAN_SOURCES="${DEBIAN_SOURCES:-}"
GRAPHROOT=/var/lib/containers/storage

say() { echo "image: $*" >&2; }

# --- tools and configuration ---------------------------------------------------------------

apt_updated=no
apt_install() {
    if [ "$(id -u)" != 0 ]; then
        say "$* missing, and installing it needs root (apt-get)"; exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ "$apt_updated" = no ]; then apt-get update -qq; apt_updated=yes; fi
    say "installing $* (apt)"
    apt-get install -y -qq "$@" >/dev/null
}

ensure_tools() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

ensure_mmdebstrap() {
    command -v mmdebstrap >/dev/null || apt_install mmdebstrap
}

# Whether the kernel mounts an overlay with its upper layer on the file system of $1 (not
# so when that is itself an overlay, as inside some containers).
overlay_works() {
    local dir
    dir="$(mktemp -d "$1/.overlay-check.XXXXXX")"
    mkdir -p "$dir/lower" "$dir/upper" "$dir/work" "$dir/merged"
    local ok=1
    if mount -t overlay overlay \
        -o "lowerdir=$dir/lower,upperdir=$dir/upper,workdir=$dir/work" "$dir/merged" 2>/dev/null
    then
        touch "$dir/merged/file" 2>/dev/null && ok=0
        umount "$dir/merged"
    fi
    rm -rf "$dir"
    return $ok
}

configure() {
    mkdir -p "$STATE"
    cat > "$STATE/containers.conf.new" <<'EOF'
# Written by scripts/image.sh: podman's configuration for this project (CONTAINERS_CONF).
[containers]
default_ulimits = []

[engine]
runtime = "runc"
EOF
    mv "$STATE/containers.conf.new" "$STATE/containers.conf"
    # Overlay: podman's own default storage, as every other podman command here uses it.
    # Where the kernel cannot mount an overlay there, vfs in a storage of its own (a
    # storage remembers its driver, and podman refuses another).
    if [ ! -f "$STATE/storage.checked" ]; then
        rm -f "$STATE/storage.conf"
        if [ "$(id -u)" = 0 ]; then
            mkdir -p "$(dirname "$GRAPHROOT")"
            if ! overlay_works "$(dirname "$GRAPHROOT")"; then
                say "overlay mounts do not work under $(dirname "$GRAPHROOT"): storage driver vfs"
                cat > "$STATE/storage.conf" <<EOF
# Written by scripts/image.sh: podman's storage for this project (CONTAINERS_STORAGE_CONF),
# as overlay mounts do not work here.
[storage]
driver = "vfs"
graphroot = "$GRAPHROOT-vfs"
runroot = "/run/containers/storage-vfs"
EOF
            fi
        fi
        touch "$STATE/storage.checked"
    fi
    export CONTAINERS_CONF="$STATE/containers.conf"
    if [ -f "$STATE/storage.conf" ]; then export CONTAINERS_STORAGE_CONF="$STATE/storage.conf"; fi
}

setup() {
    ensure_tools
    configure
}

# --- the base --------------------------------------------------------------------------------

# A Debian bookworm root file system from Debian's packages, imported as $LOCAL_BASE.
make_local_base() {
    ensure_mmdebstrap
    local sources=()
    if [ -n "$DEBIAN_SOURCES" ]; then
        sources=("$DEBIAN_SOURCES")
    else
        local file
        for file in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
            if [ -s "$file" ] && grep -q '^[^#]*bookworm' "$file"; then sources+=("$file"); fi
        done
    fi
    if [ ${#sources[@]} -eq 0 ]; then
        say "no Debian bookworm sources on this machine: set DEBIAN_SOURCES to a sources file"
        exit 1
    fi
    local tarball="$STATE/base.tar"
    say "building $LOCAL_BASE from Debian's packages (mmdebstrap, about a minute)"
    rm -f "$tarball"
    mmdebstrap --quiet --variant=minbase \
        --include=python3,python3-venv,ca-certificates,tzdata \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        bookworm "$tarball" "${sources[@]}"
    podman import --quiet \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "Debian bookworm minbase with python3, python3-venv, ca-certificates, tzdata" \
        "$tarball" "$LOCAL_BASE" >/dev/null
    rm -f "$tarball"
}

# The base to build on, on stdout: BASE when present or pulled; for the default BASE that
# cannot be pulled, the stand-in made from Debian's packages.
resolve_base() {
    if podman image exists "$BASE"; then echo "$BASE"; return; fi
    local error
    # Bounded: where a registry's address resolves but never answers, fall back in time.
    if error="$(timeout 120 podman pull --quiet "$BASE" 2>&1 >/dev/null)"; then
        echo "$BASE"; return
    fi
    error="$(echo "${error:-no answer within 120 s}" | tail -n 1)"
    if [ "$BASE" != "$OFFICIAL_BASE" ]; then
        say "cannot pull BASE=$BASE: $error"; exit 1
    fi
    if ! podman image exists "$LOCAL_BASE"; then
        say "cannot pull $BASE ($error)"
        make_local_base
    fi
    say "base: $LOCAL_BASE (Debian's packages), in place of $BASE"
    echo "$LOCAL_BASE"
}

# --- the images ------------------------------------------------------------------------------

# The CA bundle this machine's pip trusts, which the build's pip is given too (the
# Containerfile's HOST_CA_BUNDLE): where a proxy inspects TLS, the base's own CAs do not
# verify PyPI. Mounted into the build's steps only, it stays out of the image.
host_ca_bundle() {
    local bundle
    for bundle in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
        if [ -n "$bundle" ] && [ -r "$bundle" ]; then echo "$bundle"; return; fi
    done
}

build_one() {
    local tag="$1" embedded="$2" base="$3" ca ca_options=()
    ca="$(host_ca_bundle)"
    if [ -n "$ca" ]; then
        ca_options=(-v "$(readlink -f "$ca"):/run/host-ca.pem:ro" --build-arg HOST_CA_BUNDLE=/run/host-ca.pem)
    fi
    say "building $tag (EMBEDDED_POSTGRES=$embedded) on $base"
    podman build --format docker --layers "${ca_options[@]}" \
        --build-arg BASE="$base" --build-arg EMBEDDED_POSTGRES="$embedded" \
        --label io.quota-authority.base="$base" \
        -t "$tag" -f "$ROOT/Containerfile" "$ROOT"
}

size_mb() {
    podman image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1000000 }'
}

sizes() {
    local tag
    for tag in "$IMAGE" "$IMAGE_EXTERNAL_DB"; do
        if podman image exists "$tag"; then
            echo "image size: $tag $(size_mb "$tag")"
        fi
    done
}

build() {
    setup
    local base
    base="$(resolve_base)"
    build_one "$IMAGE" true "$base"
    build_one "$IMAGE_EXTERNAL_DB" false "$base"
    echo "image size: $base $(size_mb "$base") (the base)"
    sizes
}

case "${1:-}" in
    build) build ;;
    base) setup; resolve_base ;;
    sizes) configure; sizes ;;
    podman) shift; configure; exec podman "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
