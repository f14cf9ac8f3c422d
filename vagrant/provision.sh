#!/usr/bin/env bash
# Provisioning of the nodeguard test VMs (vagrant/Vagrantfile; docs/try-it.md). Runs as root
# inside a Debian 12 VM, with the repository at /nodeguard:
#
#   provision.sh kernel [kind]
#                         both machines, first: the newest Debian 12 kernel and its headers.
#                         The Vagrantfile reboots the VM after this step, so that the running
#                         kernel is the one whose headers are installed. `kind`: check the
#                         kind inputs first (fail before anything is installed).
#   provision.sh setup    machine `default`: `make setup` (BCC, containerd, runc, CNI, mounts,
#                         .venv), then `make test` when NODEGUARD_VM_TEST=1.
#   provision.sh kind     machine `kind`: Docker and kind, the agent image from
#                         deploy/Dockerfile, a kind cluster (deploy/kind/kind-config.yaml) with
#                         deploy/kubernetes applied and the runtime hook configured in each
#                         node's containerd, then deploy/kind/e2e.sh.
#
# Every step can run again (`vagrant provision [NAME]`): what is done already is skipped.
#
# Environment (the Vagrantfile passes these from the host):
#   NODEGUARD_VM_TEST=1       setup: also run `make test` (with NODEGUARD_REQUIRE_BPF=1)
#   NODEGUARD_KIND_VERSION    kind: kind release to install (default below)
#   NODEGUARD_KIND_SHA256     kind: sha256 of that release's kind-linux-<arch> binary;
#                             REQUIRED, nothing is downloaded without it (vagrant/README.md
#                             says how to get it)
#
# Not run on the machines this was written on (no virtualization, no Docker there): checked
# with shellcheck and tests/unit/test_vagrant_kind.py only.
set -euo pipefail

REPO=${NODEGUARD_REPO:-/nodeguard}
CLUSTER=${NODEGUARD_KIND_CLUSTER:-nodeguard}
KIND_VERSION=${NODEGUARD_KIND_VERSION:-v0.32.0}
KIND_SHA256=${NODEGUARD_KIND_SHA256:-}
# Namespaces whose containers the runtime hook refuses while the agent cannot answer, even
# on a fresh node (the agent adds every namespace its policies select by itself).
FAIL_CLOSED_NAMESPACES=agents

export DEBIAN_FRONTEND=noninteractive

log() { printf '==> %s\n' "$*"; }
warn() { printf 'provision.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'provision.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (Vagrant's shell provisioner does)"
}

require_repo() {
    [[ -f $REPO/Makefile && -f $REPO/scripts/setup.sh ]] ||
        die "the nodeguard repository is not at $REPO (the Vagrantfile syncs it there with rsync: vagrant rsync)"
}

apt_updated=0

# apt_install PACKAGE...: installs (or upgrades to the candidate) every package named.
apt_install() {
    if ((!apt_updated)); then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# apt_install_missing PACKAGE...: installs those not installed yet.
apt_install_missing() {
    local pkg missing=()
    for pkg in "$@"; do
        [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true) == installed ]] ||
            missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
    fi
}

# wait_until SECONDS COMMAND [ARG...]: runs COMMAND every 2 s until it succeeds.
wait_until() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 2
    done
}

ensure_mount() {
    local fstype=$1 dir=$2
    mountpoint -q "$dir" && return 0
    log "mount -t $fstype $fstype $dir"
    mount -t "$fstype" "$fstype" "$dir"
}

# The kernel headers of the running kernel, as BCC finds them.
headers_ok() {
    [[ -d /lib/modules/$(uname -r)/build/include ]]
}

# ------------------------------------------------------------------------- kernel --
#
# Differences from the machines nodeguard is developed on (docs/try-it.md has the table):
# Debian 12's own kernel (6.1) has a linux-headers package of exactly its version, so BCC
# compiles against the kernel that runs (the development VMs run 6.18 and borrow 6.1's
# headers); cgroup v2 is mounted alone at /sys/fs/cgroup (the development VMs are hybrid,
# v2 at /sys/fs/cgroup/unified); systemd mounts bpffs and tracefs at boot.
#
# A box is built at some date; Debian keeps only the current kernel ABI's headers in the
# archive, so the box's own kernel may have none left. Installing the linux-image and
# linux-headers meta packages brings the current kernel and its headers; the reboot that
# the Vagrantfile does after this step starts it.

step_kernel() {
    require_root
    # The kind machine checks its inputs before anything is installed or rebooted.
    if [[ ${1:-} == kind ]]; then
        check_kind_inputs
    fi
    local arch newest running
    arch=$(dpkg --print-architecture)
    apt_install "linux-image-$arch" "linux-headers-$arch" make rsync ca-certificates
    running=$(uname -r)
    newest=$(find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
    [[ -n $newest ]] || die "no kernel found in /boot"
    [[ -d /usr/src/linux-headers-$newest ]] ||
        die "linux-headers-$newest is not installed (apt-get install linux-headers-$newest)"
    if [[ $newest != "$running" ]]; then
        log "kernel $newest and its headers installed (running $running): the VM reboots into it now"
    else
        log "kernel $running is the newest and has its headers; the VM reboots once anyway"
    fi
}

# -------------------------------------------------------------------------- setup --

step_setup() {
    require_root
    require_repo
    local kver
    kver=$(uname -r)
    headers_ok ||
        warn "no headers for the running kernel $kver (did the reboot after the kernel step happen?); make setup links the nearest ones with a warning"
    log "make setup (scripts/setup.sh)"
    make -C "$REPO" --no-print-directory setup
    if [[ ${NODEGUARD_VM_TEST:-0} == 1 ]]; then
        # In this VM every kernel test can run: a skip would hide a problem, so make it fail.
        log "make test (NODEGUARD_VM_TEST=1; NODEGUARD_REQUIRE_BPF=1 turns kernel-test skips into failures)"
        NODEGUARD_REQUIRE_BPF=1 make -C "$REPO" --no-print-directory test
    fi
    cat <<EOF
==> nodeguard VM ready: kernel $kver, cgroup $(stat -fc %T /sys/fs/cgroup) at /sys/fs/cgroup, repository at $REPO
    demo:    vagrant ssh -c 'cd $REPO && sudo make demo'
    tests:   vagrant ssh -c 'cd $REPO && sudo make test'
    kernel:  vagrant ssh -c 'sudo $REPO/.venv/bin/nodeguard doctor'
    edited on the host?  vagrant rsync   (copies the repository into the VM again)
EOF
}

# --------------------------------------------------------------------------- kind --

check_kind_inputs() {
    [[ $KIND_VERSION =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
        die "NODEGUARD_KIND_VERSION must look like v0.32.0, not '$KIND_VERSION'"
    KIND_SHA256=${KIND_SHA256,,}
    if [[ -z $KIND_SHA256 ]]; then
        die "NODEGUARD_KIND_SHA256 is not set: nothing is downloaded without a checksum to verify.
  Get the checksum of kind $KIND_VERSION for linux-$(kind_arch) from a source you trust, e.g. the
  release page https://github.com/kubernetes-sigs/kind/releases/tag/$KIND_VERSION (asset
  kind-linux-$(kind_arch).sha256sum), or on the host:
    curl -fsSL https://github.com/kubernetes-sigs/kind/releases/download/$KIND_VERSION/kind-linux-$(kind_arch).sha256sum
  then set KIND_SHA256 in vagrant/Vagrantfile (or export NODEGUARD_KIND_SHA256=<64 hex digits>)
  and run: vagrant provision kind"
    fi
    [[ $KIND_SHA256 =~ ^[0-9a-f]{64}$ ]] ||
        die "NODEGUARD_KIND_SHA256 must be 64 hex digits (a sha256), not '$KIND_SHA256'"
}

kind_arch() {
    case "$(dpkg --print-architecture)" in
        amd64) echo amd64 ;;
        arm64) echo arm64 ;;
        *) die "no kind release binary for architecture $(dpkg --print-architecture)" ;;
    esac
}

install_kind() {
    local url tmp got
    if [[ -x /usr/local/bin/kind ]] &&
        [[ $(sha256sum /usr/local/bin/kind | cut -d ' ' -f 1) == "$KIND_SHA256" ]]; then
        log "kind $KIND_VERSION already installed (/usr/local/bin/kind, sha256 verified)"
        return
    fi
    url="https://github.com/kubernetes-sigs/kind/releases/download/$KIND_VERSION/kind-linux-$(kind_arch)"
    tmp=$(mktemp)
    log "downloading $url"
    curl -fsSL --retry 3 -o "$tmp" "$url" || {
        rm -f "$tmp"
        die "download of $url failed"
    }
    got=$(sha256sum "$tmp" | cut -d ' ' -f 1)
    if [[ $got != "$KIND_SHA256" ]]; then
        rm -f "$tmp"
        die "sha256 of $url is $got, expected $KIND_SHA256 (NODEGUARD_KIND_SHA256): nothing installed"
    fi
    install -m 0755 "$tmp" /usr/local/bin/kind
    rm -f "$tmp"
    log "kind $KIND_VERSION installed (sha256 verified)"
}

control_plane() { echo "$CLUSTER-control-plane"; }

# kubectl of the control-plane node (kind's node image has it; it is what kind itself uses).
node_kubectl() {
    docker exec -i "$(control_plane)" kubectl --kubeconfig=/etc/kubernetes/admin.conf "$@"
}

# A `kubectl` for this VM without another download: the same as node_kubectl. Not
# installed over a real kubectl.
install_kubectl_wrapper() {
    local current
    current=$(command -v kubectl || true)
    if [[ -n $current ]] && ! grep -q 'nodeguard kind wrapper' "$current" 2>/dev/null; then
        log "using the installed kubectl ($current)"
        return
    fi
    cat >/usr/local/bin/kubectl <<EOF
#!/bin/sh
# nodeguard kind wrapper, written by vagrant/provision.sh: runs kubectl inside the kind
# cluster's control-plane node container (kind's node image ships it), so nothing else
# had to be downloaded. Paths given with -f/-k are paths INSIDE that container: pipe
# manifests on stdin instead (kubectl apply -f - <file). Needs root or the docker group.
exec docker exec -i "\${NODEGUARD_KIND_CLUSTER:-$CLUSTER}-control-plane" \\
    kubectl --kubeconfig=/etc/kubernetes/admin.conf "\$@"
EOF
    chmod 0755 /usr/local/bin/kubectl
    log "installed /usr/local/bin/kubectl (runs the kubectl of node $(control_plane))"
}

# Builds deploy/Dockerfile from exactly the files it copies, tagged with their hash, so an
# unchanged tree is not rebuilt and a changed one gets a new tag (and a rollout). Sets IMAGE.
build_image() {
    local ctx tag
    ctx=$(mktemp -d)
    tar -C "$REPO" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        --exclude=__pycache__ --exclude='*.pyc' \
        -cf "$ctx/context.tar" pyproject.toml README.md bpf nodeguard deploy/Dockerfile
    tag="kind-$(sha256sum "$ctx/context.tar" | cut -c 1-12)"
    IMAGE="nodeguard:$tag"
    if docker image inspect "$IMAGE" >/dev/null 2>&1; then
        log "image $IMAGE already built"
    else
        log "docker build -f deploy/Dockerfile -t $IMAGE (context: pyproject.toml README.md bpf/ nodeguard/)"
        docker build -f deploy/Dockerfile -t "$IMAGE" - <"$ctx/context.tar"
    fi
    rm -rf "$ctx"
}

create_cluster() {
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
        log "kind cluster $CLUSTER exists"
        return
    fi
    log "kind create cluster --name $CLUSTER --config deploy/kind/kind-config.yaml"
    kind create cluster --name "$CLUSTER" --config "$REPO/deploy/kind/kind-config.yaml" --wait 300s
}

# The runtime hook runs in the node's mount namespace with the node's /usr/bin/python3
# (>= 3.11). kind's node image has no Python: install Debian's.
ensure_node_python() {
    local node=$1
    if ! docker exec "$node" test -x /usr/bin/python3; then
        log "$node: installing python3 (the runtime hook runs with the node's Python)"
        docker exec "$node" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 >/dev/null'
    fi
    docker exec "$node" /usr/bin/python3 -c \
        'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "python3 on the node is %d.%d; the hook needs >= 3.11" % sys.version_info[:2])'
}

# deploy/kubernetes with the image override, applied from inside the control-plane node
# (its kubectl reads files there).
deploy_nodeguard() {
    local node dir=/tmp/nodeguard-deploy
    node=$(control_plane)
    docker exec "$node" rm -rf "$dir"
    docker exec "$node" mkdir -p "$dir/kind"
    tar -C "$REPO/deploy" -cf - kubernetes | docker exec -i "$node" tar -C "$dir" -xf -
    docker exec -i "$node" sh -c "cat >$dir/kind/kustomization.yaml" <<EOF
# Written by vagrant/provision.sh: deploy/kubernetes with the image built in this VM.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../kubernetes
images:
  - name: nodeguard
    newName: ${IMAGE%%:*}
    newTag: ${IMAGE#*:}
EOF
    log "kubectl apply -k deploy/kubernetes (image $IMAGE)"
    node_kubectl apply -k "$dir/kind"
}

# The collector link (docs/deploy.md, "The collector"): a private CA, the collector's server
# certificate for its Service name and this node's client certificate, made by the image's
# own `nodeguard collector certs`. The node's pair goes where the DaemonSet reads it
# (/var/lib/nodeguard/pki on the node); the CA and the server pair become the two Secrets.
# Idempotent: an existing node certificate and Secrets are kept.
collector_pki() {
    local node dir
    node=$(control_plane)
    if docker exec "$node" test -s /var/lib/nodeguard/pki/node.crt &&
        node_kubectl -n nodeguard get secret nodeguard-collector-tls >/dev/null 2>&1; then
        log "collector certificates exist"
        return
    fi
    dir=$(mktemp -d)
    log "nodeguard collector certs (CA, collector server certificate, node $node)"
    docker run --rm --user 0 -v "$dir:/out" "$IMAGE" collector certs --out /out \
        --host nodeguard-collector.nodeguard.svc \
        --host nodeguard-collector.nodeguard.svc.cluster.local --node "$node"
    docker exec "$node" mkdir -p /var/lib/nodeguard/pki /tmp/nodeguard-pki
    docker exec -i "$node" sh -c 'cat >/var/lib/nodeguard/pki/node.crt' <"$dir/node-$node.crt"
    docker exec -i "$node" sh -c 'umask 077; cat >/var/lib/nodeguard/pki/node.key' <"$dir/node-$node.key"
    for f in ca.crt server.crt server.key; do
        docker exec -i "$node" sh -c "umask 077; cat >/tmp/nodeguard-pki/$f" <"$dir/$f"
    done
    rm -rf "$dir"
    node_kubectl create namespace nodeguard --dry-run=client -o yaml | node_kubectl apply -f -
    node_kubectl -n nodeguard create secret generic nodeguard-collector-tls \
        --from-file=tls.crt=/tmp/nodeguard-pki/server.crt \
        --from-file=tls.key=/tmp/nodeguard-pki/server.key \
        --from-file=ca.crt=/tmp/nodeguard-pki/ca.crt --dry-run=client -o yaml |
        node_kubectl apply -f -
    node_kubectl -n nodeguard create secret generic nodeguard-collector-ca \
        --from-file=ca.crt=/tmp/nodeguard-pki/ca.crt --dry-run=client -o yaml |
        node_kubectl apply -f -
    docker exec "$node" rm -rf /tmp/nodeguard-pki
}

wait_daemonset() {
    log "waiting for DaemonSet nodeguard/nodeguard (BCC compiles the programs at agent start)"
    node_kubectl -n nodeguard rollout status daemonset/nodeguard --timeout=300s ||
        die "the nodeguard DaemonSet is not ready; look at: kubectl -n nodeguard describe pods; kubectl -n nodeguard logs ds/nodeguard"
}

# deploy/containerd/make-base-spec.sh, from kind's own base spec (it carries kind's
# createContainer hook), then every runtime that used kind's base spec points at ours, and
# containerd restarts (running containers are not touched). The launcher it checks was
# installed by the DaemonSet's init container, so this comes after the DaemonSet is ready.
configure_hook() {
    local node=$1 before after
    local spec=/etc/nodeguard/containerd-base-spec.json config=/etc/containerd/config.toml
    docker exec "$node" test -x /opt/nodeguard/bin/nodeguard-hook ||
        die "$node: /opt/nodeguard/bin/nodeguard-hook is missing: the DaemonSet's init container has not run there"
    before=$(docker exec "$node" sh -c "cat $config $spec 2>/dev/null | sha256sum")
    docker cp "$REPO/deploy/containerd/make-base-spec.sh" "$node:/usr/local/sbin/nodeguard-make-base-spec"
    log "$node: make-base-spec.sh --from /etc/containerd/cri-base.json --fail-closed-namespaces $FAIL_CLOSED_NAMESPACES"
    docker exec "$node" bash /usr/local/sbin/nodeguard-make-base-spec \
        --from /etc/containerd/cri-base.json --fail-closed-namespaces "$FAIL_CLOSED_NAMESPACES" \
        --output "$spec"
    docker exec "$node" sed -i \
        "s#base_runtime_spec = \"/etc/containerd/cri-base.json\"#base_runtime_spec = \"$spec\"#" "$config"
    docker exec "$node" grep -q "base_runtime_spec = \"$spec\"" "$config" ||
        die "$node: could not set base_runtime_spec in $config (kind changed its containerd config?)"
    after=$(docker exec "$node" sh -c "cat $config $spec 2>/dev/null | sha256sum")
    if [[ $before == "$after" ]]; then
        log "$node: containerd already uses the nodeguard base spec"
        return
    fi
    log "$node: systemctl restart containerd"
    docker exec "$node" systemctl restart containerd
    wait_until 60 docker exec "$node" crictl info ||
        die "$node: containerd did not come back after the restart: docker exec $node journalctl -u containerd"
    docker exec "$node" sh -c 'containerd config dump | grep base_runtime_spec' || true
}

step_kind() {
    require_root
    require_repo
    check_kind_inputs
    headers_ok ||
        die "no kernel headers for the running kernel $(uname -r) at /lib/modules/$(uname -r)/build: the agent pods compile against them (did the reboot after the kernel step happen?)"

    apt_install_missing docker.io jq curl ca-certificates tar
    systemctl enable --now docker >/dev/null
    if id vagrant >/dev/null 2>&1; then
        usermod -aG docker vagrant
    fi
    # The kind node bind-mounts these from the VM (deploy/kind/kind-config.yaml); systemd
    # mounts both at boot, this only makes sure.
    ensure_mount bpf /sys/fs/bpf
    ensure_mount tracefs /sys/kernel/tracing

    install_kind
    build_image
    create_cluster
    install_kubectl_wrapper

    local nodes node
    nodes=$(kind get nodes --name "$CLUSTER")
    [[ -n $nodes ]] || die "kind cluster $CLUSTER has no nodes"
    for node in $nodes; do
        ensure_node_python "$node"
    done
    log "kind load docker-image $IMAGE"
    kind load docker-image "$IMAGE" --name "$CLUSTER"
    collector_pki
    deploy_nodeguard
    wait_daemonset
    for node in $nodes; do
        configure_hook "$node"
    done
    node_kubectl wait --for=condition=Ready nodes --all --timeout=120s >/dev/null ||
        die "nodes not ready after the containerd restart"
    wait_daemonset

    log "deploy/kind/e2e.sh"
    bash "$REPO/deploy/kind/e2e.sh"
    cat <<EOF
==> kind cluster $CLUSTER: nodeguard ($IMAGE) with the runtime hook, e2e passed
    status:     vagrant ssh kind -c 'sudo kubectl -n nodeguard exec ds/nodeguard -- nodeguard status'
    e2e again:  vagrant ssh kind -c 'sudo bash $REPO/deploy/kind/e2e.sh'
    new code:   vagrant rsync kind && vagrant provision kind --provision-with kind
    kubectl in this VM runs inside the node container $(control_plane) (/usr/local/bin/kubectl)
EOF
}

# --------------------------------------------------------------------------- main --

main() {
    case "${1:-}" in
        kernel) step_kernel "${2:-}" ;;
        setup) step_setup ;;
        kind) step_kind ;;
        -h | --help)
            usage
            ;;
        *)
            usage >&2
            echo "provision.sh: error: expected one step: kernel, setup or kind (got '${1:-}')" >&2
            exit 2
            ;;
    esac
}

main "$@"
