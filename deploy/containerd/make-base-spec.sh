#!/usr/bin/env bash
# Write containerd's base runtime spec with nodeguard's createRuntime hook.
#
# Run on each node, as root, AFTER the nodeguard DaemonSet's pod has started there (its
# init container installs the hook launcher at /opt/nodeguard/bin/nodeguard-hook). Then
# point containerd's runc runtime at the file (config-snippet.toml next to this script)
# and restart containerd. Full procedure: docs/deploy.md; why each piece:
# docs/runtime-hook.md.
#
# What it does:
#   1. runs the launcher the way runc will (absolute path, empty environment, OCI state
#      on stdin) on three made-up containers and checks the answers, so a launcher that
#      cannot run on this node (no Python >= 3.11, files missing, a bad option) is found
#      now, not when every new container on the node fails;
#   2. takes containerd's own default spec (`ctr oci spec`), removes what the CRI plugin
#      removes from its built-in default (process.rlimits, process.apparmorProfile,
#      linux.seccomp; with a base spec it would keep them: every pod would get
#      RLIMIT_NOFILE 1024, for one), and sets hooks.createRuntime to the launcher;
#   3. writes the result atomically (default /etc/nodeguard/containerd-base-spec.json).
#
# The smoke test leaves two records in the journal (journalctl -t nodeguard-hook): the
# hook logs every decision it takes without the agent.

set -euo pipefail

hook=/opt/nodeguard/bin/nodeguard-hook
socket=/run/nodeguard/agent.sock
fail_closed=""
exempt=""
fail_closed_file=""
timeout_ms=5000
output=/etc/nodeguard/containerd-base-spec.json
python=/usr/bin/python3
from=""
check=1

usage() {
    cat <<'USAGE'
usage: make-base-spec.sh [options]

  --fail-closed-namespaces NS[,NS...]|*   refuse new containers of these namespaces while
                                          the agent cannot answer, even before the agent
                                          has ever run on this node (default: none; the
                                          agent's own file adds every namespace its
                                          policies select)
  --exempt-namespaces NS[,NS...]          never refused by a '*' (hook default:
                                          kube-system,nodeguard; keep nodeguard in it)
  --fail-closed-file PATH                 namespaces file the agent writes (hook default:
                                          /var/lib/nodeguard/fail-closed-namespaces)
  --timeout-ms N                          how long the hook waits for the agent (5000)
  --socket PATH                           the agent's API socket (/run/nodeguard/agent.sock)
  --hook PATH                             the launcher (/opt/nodeguard/bin/nodeguard-hook)
  --output FILE|-                         where to write the spec
                                          (/etc/nodeguard/containerd-base-spec.json)
  --from FILE                             start from this OCI spec instead of `ctr oci spec`
  --python PATH                           Python used to edit the JSON (/usr/bin/python3)
  --no-check                              skip the launcher smoke test (not recommended)
USAGE
}

die() {
    echo "make-base-spec.sh: error: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --fail-closed-namespaces) fail_closed="${2?--fail-closed-namespaces needs a value}"; shift 2 ;;
        --exempt-namespaces) exempt="${2?--exempt-namespaces needs a value}"; shift 2 ;;
        --fail-closed-file) fail_closed_file="${2?--fail-closed-file needs a value}"; shift 2 ;;
        --timeout-ms) timeout_ms="${2?--timeout-ms needs a value}"; shift 2 ;;
        --socket) socket="${2?--socket needs a value}"; shift 2 ;;
        --hook) hook="${2?--hook needs a value}"; shift 2 ;;
        --output) output="${2?--output needs a value}"; shift 2 ;;
        --from) from="${2?--from needs a value}"; shift 2 ;;
        --python) python="${2?--python needs a value}"; shift 2 ;;
        --no-check) check=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

case "$hook" in /*) ;; *) die "--hook must be an absolute path (runc runs it with no PATH)" ;; esac
case "$timeout_ms" in
    '' | *[!0-9]*) die "--timeout-ms must be a whole number of milliseconds, not '$timeout_ms'" ;;
esac
if [ "$timeout_ms" -lt 100 ] || [ "$timeout_ms" -gt 60000 ]; then
    die "--timeout-ms must be between 100 and 60000"
fi
[ -x "$python" ] || die "$python not found: give --python PATH (the hook needs Python >= 3.11 anyway)"

# runc's own limit for the hook (seconds): above the hook's wait, so that the hook's
# fail-closed/fail-open decision applies, not runc killing it.
runc_timeout=$(((timeout_ms + 999) / 1000 + 5))

# The hook's argv as runc will pass it (args[0] is the program name).
hook_args=(nodeguard-hook --socket "$socket" --timeout-ms "$timeout_ms")
[ -n "$fail_closed" ] && hook_args+=(--fail-closed-namespaces "$fail_closed")
[ -n "$exempt" ] && hook_args+=(--exempt-namespaces "$exempt")
[ -n "$fail_closed_file" ] && hook_args+=(--fail-closed-file "$fail_closed_file")

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

# A made-up OCI state, as runc writes it on the hook's stdin. $1: namespace ("" for a
# container that is not part of a Kubernetes pod).
oci_state() {
    if [ -z "$1" ]; then
        printf '{"ociVersion":"1.0.2","id":"nodeguard-smoke","status":"creating","pid":1,"bundle":"%s","annotations":{}}\n' "$workdir"
    else
        printf '{"ociVersion":"1.0.2","id":"nodeguard-smoke","status":"creating","pid":1,"bundle":"%s","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"nodeguard-smoke","io.kubernetes.cri.sandbox-namespace":"%s","io.kubernetes.cri.sandbox-name":"smoke","io.kubernetes.cri.sandbox-uid":"00000000-0000-0000-0000-000000000000","io.kubernetes.cri.container-name":"smoke"}}\n' "$workdir" "$1"
    fi
}

# Run the launcher as runc does; the real options first, then overrides that point it at
# a socket nobody listens on and ignore the agent's namespaces file. Prints the exit code.
run_hook() {
    local namespace="$1"
    shift
    local code=0
    oci_state "$namespace" \
        | env -i "$hook" "${hook_args[@]:1}" --socket "$workdir/no-agent.sock" \
            --fail-closed-file '' "$@" >"$workdir/out" 2>&1 \
        || code=$?
    echo "$code"
}

expect() {
    local want="$1" got="$2" what="$3"
    if [ "$got" != "$want" ]; then
        echo "make-base-spec.sh: smoke test failed: $what: exit $got, expected $want; output:" >&2
        sed 's/^/  /' "$workdir/out" >&2
        exit 1
    fi
}

if [ "$check" = 1 ]; then
    [ -x "$hook" ] || die "$hook is missing or not executable: start the nodeguard DaemonSet on this node first (its install-hook init container writes it), or give --hook PATH"
    expect 0 "$(run_hook '')" "a container outside Kubernetes must start without asking the agent"
    expect 0 "$(run_hook nodeguard --fail-closed-namespaces '*')" \
        "the agent's own namespace must start while no agent answers (exempt from '*')"
    expect 1 "$(run_hook nodeguard-smoke --fail-closed-namespaces nodeguard-smoke)" \
        "a fail-closed namespace must be refused while no agent answers"
    echo "make-base-spec.sh: $hook passed the smoke test" >&2
fi

default_spec="$workdir/default.json"
if [ -n "$from" ]; then
    cp -- "$from" "$default_spec"
else
    command -v ctr >/dev/null || die "ctr (containerd's CLI) not found: install it, or give --from FILE with containerd's default spec"
    ctr oci spec >"$default_spec"
fi

result="$workdir/base-spec.json"
"$python" - "$default_spec" "$result" "$hook" "$runc_timeout" "${hook_args[@]}" <<'PY'
import json
import sys

source, result, hook, timeout, *args = sys.argv[1:]
with open(source, encoding="utf-8") as f:
    spec = json.load(f)
if not isinstance(spec, dict) or "ociVersion" not in spec:
    sys.exit(f"make-base-spec.sh: error: {source} is not an OCI runtime spec")
# What containerd's CRI plugin strips from its built-in default spec, and keeps from a
# base spec: the CRI request decides these per container.
spec.get("process", {}).pop("rlimits", None)
spec.get("process", {}).pop("apparmorProfile", None)
spec.get("linux", {}).pop("seccomp", None)
hooks = spec.setdefault("hooks", {})
others = [h for h in hooks.get("createRuntime", []) if h.get("path") != hook]
if others:
    print(f"make-base-spec.sh: keeping {len(others)} other createRuntime hook(s)", file=sys.stderr)
hooks["createRuntime"] = [*others, {"path": hook, "args": args, "timeout": int(timeout)}]
with open(result, "w", encoding="utf-8") as f:
    json.dump(spec, f, indent=2)
    f.write("\n")
PY

if [ "$output" = - ]; then
    cat "$result"
    exit 0
fi
mkdir -p "$(dirname "$output")"
chmod 0644 "$result"
cp -- "$result" "$output.tmp"
mv -f -- "$output.tmp" "$output"
cat >&2 <<DONE
make-base-spec.sh: wrote $output
  hook: $hook ${hook_args[*]:1}
next:
  1. in /etc/containerd/config.toml, add to the runc runtime's table (see
     deploy/containerd/config-snippet.toml):
       base_runtime_spec = "$output"
  2. systemctl restart containerd   (base specs are read at start; running containers
     are not touched)
  3. check: containerd config dump | grep base_runtime_spec
DONE
