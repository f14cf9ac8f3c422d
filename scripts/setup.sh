#!/usr/bin/env bash
# nodeguard machine + development setup (Debian 12 / Ubuntu 22.04+), idempotent.
#
#   sudo scripts/setup.sh            # system packages, kernel headers, mounts, .venv with dev extras
#   sudo scripts/setup.sh --no-dev   # the same, without the dev extras (pytest, mypy, ruff)
#
# What it does, skipping every step that is already done (a second run takes seconds):
#   1. apt packages: BCC from the distribution (python3-bpfcc; the PyPI "bcc" is unrelated),
#      compilers, the tools the tests use, and containerd + runc + CNI plugins + umoci +
#      busybox-static for the node tests (tests/node start a private containerd of their
#      own). `apt-get update` runs once, only if something has to be installed.
#   2. kernel headers as /lib/modules/$(uname -r)/build, which BCC compiles against. When the
#      distribution has no headers package for the running kernel, the newest headers it has
#      are linked instead, with a loud warning (see docs/kernel-requirements.md).
#   3. tracefs at /sys/kernel/tracing and bpffs at /sys/fs/bpf.
#   4. ./.venv from /usr/bin/python3 with --system-site-packages (so `import bcc` works),
#      with nodeguard installed in editable mode.
# Needs no stdin (CI runs it through .ci/run).
set -euo pipefail

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
}

DEV=1
for arg in "$@"; do
    case "$arg" in
        --no-dev) DEV=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "setup.sh: unknown argument: $arg" >&2
            usage >&2
            exit 2
            ;;
    esac
done

if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: error: must run as root (it installs packages, links kernel headers and" >&2
    echo "mounts tracefs/bpffs). Run: sudo make setup   (or: sudo scripts/setup.sh)" >&2
    exit 1
fi

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

KVER=$(uname -r)
VENV="$REPO_ROOT/.venv"
HEADERS_NOTE="matching linux-headers-$KVER"

log() { printf '==> %s\n' "$*"; }

if [[ ! -r /etc/os-release ]]; then
    echo "setup.sh: error: /etc/os-release missing: only Debian 12 / Ubuntu 22.04+ are supported" >&2
    exit 1
fi
# shellcheck source=/dev/null
. /etc/os-release
DISTRO_ID=${ID:-unknown}
if [[ $DISTRO_ID != debian && $DISTRO_ID != ubuntu && ${ID_LIKE:-} != *debian* ]]; then
    echo "setup.sh: error: unsupported distribution '$DISTRO_ID' (Debian 12 / Ubuntu 22.04+)" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------
# 1. packages

PACKAGES=(
    python3-bpfcc bpfcc-tools libbpfcc     # BCC: compiles + loads the BPF programs
    python3 python3-venv python3-dev       # the venv is made from Debian's /usr/bin/python3
    gcc make libc6-dev linux-libc-dev      # ABI layout test compiles the shared header
    iproute2 kmod util-linux procps        # ip netns/veth test hosts, mountpoint, nsenter
    ca-certificates                        # pip over https
    containerd runc                        # a real node runtime (CRI) for tests/node
    containernetworking-plugins            # CNI bridge/host-local/loopback for test pods
    umoci busybox-static                   # builds the tiny local OCI image test pods run
)
if [[ $DEV -eq 1 ]]; then
    PACKAGES+=(shellcheck jq ruby) # `make lint` checks scripts; tests run jq and `ruby -c`
    PACKAGES+=(bpftool)            # tests check that nothing stays loaded (bpftool prog)
    # real SIEM-side parts the collector tests start privately: syslog over TCP/TLS, JetStream
    PACKAGES+=(rsyslog rsyslog-gnutls nats-server)
fi

APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}

is_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

apt_install() {
    apt_update_once
    log "apt-get install $*"
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# True when apt knows an installable version of the package.
has_candidate() {
    local candidate
    candidate=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [[ -n $candidate && $candidate != "(none)" ]]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    apt_install "${missing[@]}"
else
    log "packages: all present"
fi

# ---------------------------------------------------------------------------------------
# 2. kernel headers for BCC

BUILD="/lib/modules/$KVER/build"

headers_warning() {
    local used=$1
    cat >&2 <<EOF

#############################################################################################
#  WARNING: KERNEL HEADERS DO NOT MATCH THE RUNNING KERNEL
#
#  The distribution has no linux-headers-$KVER package, so
#      $BUILD -> $used
#  BCC will compile nodeguard's BPF programs against headers $(basename "$used" | sed 's/^linux-headers-//')
#  for kernel $KVER.
#
#  This is safe ONLY because nodeguard's BPF touches only UAPI contexts (bpf_sock_addr,
#  bpf_sock, __sk_buff), tracepoint arguments (whose layout BCC reads from tracefs at run
#  time) and BPF helpers. Any program that reads a kernel-internal struct would compile and
#  silently read garbage on this kernel. Install matching headers when they exist.
#############################################################################################

EOF
}

# Release a headers tree was configured for (empty when unknown).
headers_release() {
    sed -n 's/^#define UTS_RELEASE "\(.*\)"$/\1/p' "$1/include/generated/utsrelease.h" 2>/dev/null || true
}

if [[ -e $BUILD ]]; then
    target=$(readlink -f "$BUILD")
    log "kernel headers: $BUILD -> $target (already present)"
    HEADERS_NOTE="$target"
    rel=$(headers_release "$BUILD")
    if [[ -n $rel && $rel != "$KVER" ]]; then
        HEADERS_NOTE="$target (headers $rel for kernel $KVER: MISMATCH, safe only for"
        HEADERS_NOTE+=" nodeguard's UAPI/tracepoint/helper-only BPF; see nodeguard doctor)"
    fi
elif apt_update_once && has_candidate "linux-headers-$KVER"; then
    apt_install "linux-headers-$KVER"
    HEADERS_NOTE="linux-headers-$KVER"
else
    if [[ $DISTRO_ID == ubuntu ]]; then
        meta=linux-headers-generic
    else
        arch=$(dpkg --print-architecture)
        case "$arch" in
            amd64 | arm64) meta="linux-headers-$arch" ;;
            *)
                echo "setup.sh: error: no linux-headers-$KVER and no known headers package for" >&2
                echo "architecture '$arch'; install headers and link them as $BUILD" >&2
                exit 1
                ;;
        esac
    fi
    is_installed "$meta" || apt_install "$meta"
    # The newest configured headers tree (it has a .config; -common trees do not).
    newest=""
    for dir in /usr/src/linux-headers-*; do
        [[ -f $dir/.config ]] && newest+="$dir"$'\n'
    done
    newest=$(printf '%s' "$newest" | sort -V | tail -n 1)
    if [[ -z $newest ]]; then
        echo "setup.sh: error: installed $meta but found no headers tree in /usr/src" >&2
        exit 1
    fi
    mkdir -p "/lib/modules/$KVER"
    ln -sfn "$newest" "$BUILD"
    # Debian: linux-headers-X-amd64 + linux-headers-X-common; Ubuntu: ...-generic + linux-headers-X
    base=${newest%-*}
    for common in "$base-common" "$base"; do
        if [[ -d $common && $common != "$newest" ]]; then
            ln -sfn "$common" "/lib/modules/$KVER/source"
            break
        fi
    done
    headers_warning "$newest"
    HEADERS_NOTE="$newest (MISMATCH, see warning above)"
fi

# ---------------------------------------------------------------------------------------
# 3. mounts

ensure_mount() {
    local fstype=$1 dir=$2
    if mountpoint -q "$dir"; then
        return
    fi
    mkdir -p "$dir"
    log "mount -t $fstype $fstype $dir"
    mount -t "$fstype" "$fstype" "$dir"
}
ensure_mount tracefs /sys/kernel/tracing
ensure_mount bpf /sys/fs/bpf

# ---------------------------------------------------------------------------------------
# 4. virtual environment

venv_ok() {
    [[ -x $VENV/bin/python ]] &&
        grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg" 2>/dev/null &&
        grep -qx 'home = /usr/bin' "$VENV/pyvenv.cfg" 2>/dev/null &&
        "$VENV/bin/python" -c 'import sys' 2>/dev/null
}

if ! venv_ok; then
    if [[ -e $VENV ]]; then
        log "recreating $VENV (not a --system-site-packages venv of /usr/bin/python3)"
        rm -rf -- "$VENV"
    fi
    log "creating $VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi

# pip runs only when pyproject.toml or the extras changed since the last successful install.
EXTRAS=""
[[ $DEV -eq 1 ]] && EXTRAS="[dev]"
STAMP="$VENV/.nodeguard-setup"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) extras=$EXTRAS"
if [[ -f $STAMP && $(cat "$STAMP") == "$want" && -x $VENV/bin/nodeguard ]]; then
    log "python packages: up to date"
else
    log "pip install -e .$EXTRAS"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".$EXTRAS"
    printf '%s\n' "$want" >"$STAMP"
fi

# ---------------------------------------------------------------------------------------
# verify

if ! bcc_version=$("$VENV/bin/python" -c 'import bcc; print(bcc.__version__)' 2>&1); then
    echo "setup.sh: error: '$VENV/bin/python -c \"import bcc\"' failed:" >&2
    echo "$bcc_version" >&2
    exit 1
fi

cat <<EOF
==> setup done
    kernel:   $KVER
    headers:  $HEADERS_NOTE
    python:   $("$VENV/bin/python" --version 2>&1) ($VENV)
    bcc:      $bcc_version
    mounts:   tracefs /sys/kernel/tracing, bpffs /sys/fs/bpf
    next:     sudo make demo | sudo make test | sudo .venv/bin/nodeguard doctor
EOF
