#!/usr/bin/env bash
# The base images deploy/Dockerfile builds FROM: python:3.11-slim and
# apache/beam_python3.11_sdk:2.77.0. Where Docker can pull them, the official images are
# used and nothing here is built. Where no registry of images is reachable (these build
# machines), stand-ins are built under the same names from Debian's packages:
#
#   python:3.11-slim                   a Debian bookworm root made with debootstrap
#                                      (its python3.11 is the official image's minor
#                                      version), pip trusting the certificate
#                                      authorities this host's pip trusts
#                                      (the host's bundle is copied into the stand-in
#                                      only; an official base gets nothing of the host)
#   apache/beam_python3.11_sdk:2.77.0  /opt/apache/beam/boot, a shell script that does
#                                      nothing and exits 0: the real boot program is a
#                                      Go binary that cannot be had here, so Dataflow
#                                      workers are not exercised (design only)
#
# Each stand-in carries the label imgpipe.standin and is rebuilt only when this
# script changes (the label holds its hash). Usage: bash deploy/base_images.sh
set -euo pipefail
cd "$(dirname "$0")"

PYTHON_BASE=python:3.11-slim
BEAM_BASE=apache/beam_python3.11_sdk:2.77.0
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
RECIPE=$(sha256sum base_images.sh | cut -c1-16)

have() {     # an image that is official, or a stand-in of this recipe
    local label
    docker image inspect "$1" >/dev/null 2>&1 || return 1
    label=$(docker image inspect -f '{{ index .Config.Labels "imgpipe.standin" }}' "$1" 2>/dev/null)
    [ -z "$label" ] || [ "$label" = "$RECIPE" ] || [ "$label" = "<no value>" ]
}

pulled() {
    timeout 60 docker pull -q "$1" >/dev/null 2>&1
}

build_python() {
    local root
    root=$(mktemp -d /var/tmp/imgpipe-rootfs-XXXXXX)
    trap 'rm -rf "$root"' RETURN
    echo "building the stand-in $PYTHON_BASE with debootstrap ($SUITE, $MIRROR)" >&2
    debootstrap --variant=minbase \
        --include=python3.11,python3.11-venv,python3-pip,ca-certificates \
        "$SUITE" "$root" "$MIRROR" >/dev/null
    rm -f "$root"/usr/lib/python3.11/EXTERNALLY-MANAGED
    ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python"
    ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python3"
    # pip and its wheels as the official image has them: `pip` on the PATH
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
    if [ -f "$CA_BUNDLE" ]; then     # the package index is reached through a proxy it trusts
        mkdir -p "$root/usr/local/share/imgpipe-standin"
        cp "$CA_BUNDLE" "$root/usr/local/share/imgpipe-standin/ca-certificates.crt"
        printf '[global]\ncert = /usr/local/share/imgpipe-standin/ca-certificates.crt\n' \
            > "$root/etc/pip.conf"
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import \
        -c "LABEL imgpipe.standin=$RECIPE" \
        -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8' \
        -c 'CMD ["python3"]' - "$PYTHON_BASE" >/dev/null
}

build_beam() {
    local context
    context=$(mktemp -d)
    trap 'rm -rf "$context"' RETURN
    echo "building the stand-in $BEAM_BASE (boot: a no-op)" >&2
    mkdir -p "$context/opt/apache/beam"
    cat > "$context/opt/apache/beam/boot" <<'EOF'
#!/bin/sh
# imgpipe stand-in for Beam's SDK worker boot program (a Go binary that cannot be had
# where this image was built). Like the real one handed a KFP task's command as its
# arguments, it does nothing and exits 0: what `imgpipe run --engine kfp-docker` must
# guard against (it replaces the entrypoint, as Kubernetes and Vertex AI do, and fails
# a task that wrote no outputs).
echo "beam boot stand-in: not a Dataflow worker; ignoring: $*" >&2
exit 0
EOF
    chmod 755 "$context/opt/apache/beam/boot"
    printf 'FROM scratch\nLABEL imgpipe.standin=%s\nCOPY opt /opt\n' "$RECIPE" \
        > "$context/Dockerfile"
    docker build -q -t "$BEAM_BASE" "$context" >/dev/null
}

if have "$PYTHON_BASE" || pulled "$PYTHON_BASE"; then
    echo "$PYTHON_BASE: present" >&2
else
    build_python
fi
if have "$BEAM_BASE" || pulled "$BEAM_BASE"; then
    echo "$BEAM_BASE: present" >&2
else
    build_beam
fi
