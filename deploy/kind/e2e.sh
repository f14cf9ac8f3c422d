#!/usr/bin/env bash
# nodeguard end to end on a cluster: a guarded pod's first connect is refused by the
# kernel, the same pod without the label connects, and the agent reports both.
#
#   deploy/kind/e2e.sh        (kubectl's current context; docs/try-it.md, way (c))
#
# Needs: nodeguard deployed from deploy/kubernetes with the runtime hook configured in
# containerd (vagrant/provision.sh does both on its kind cluster), kubectl and jq on PATH,
# and nodes that can pull busybox (NODEGUARD_E2E_IMAGE to use another image that has
# httpd, wget and sleep). Written for the single-node kind cluster of
# deploy/kind/kind-config.yaml; every check also works on a multi-node cluster.
#
# Not run on the machines it was written on (no cluster there): only against a fake
# kubectl, by tests/unit/test_vagrant_kind.py.
#
# What it does, each step bounded in time:
#   1. waits for the DaemonSet (kubectl rollout status);
#   2. adds the policy nodeguard-e2e to the nodeguard-policies ConfigMap (key
#      nodeguard-e2e.yaml): enforce, namespace agents, label app=research-agent, no egress
#      allowed; waits until every agent has loaded it (the kubelet refreshes ConfigMap
#      volumes on its own schedule, up to a minute or two);
#   3. creates the namespace agents and a server pod (busybox httpd on port 8080; not nc,
#      which serves one connection and then leaves a moment with no listener);
#   4. starts two client pods that differ only in the label app=research-agent. Their
#      container `client` IS the connect (wget to the server's pod IP as its entrypoint), so
#      the guarded one is refused at its first connect only if the runtime hook put the pod
#      under its policy before the container started; a second container sleeps so that
#      the pod stays for step 6;
#   5. checks: the unlabelled client got the server's page (exit 0), the labelled one
#      failed with EPERM ("Operation not permitted");
#   6. checks `nodeguard status --json` of the agent on that node: the labelled pod guarded
#      by nodeguard-e2e in enforce mode with a violation, the unlabelled one not guarded;
#   7. checks and prints the violation records (OCSF JSON lines in the agent's event log)
#      of the labelled pod for the server's address and port;
#   8. cleans up: deletes the namespace agents and removes the policy key again (also on
#      failure or Ctrl-C; NODEGUARD_E2E_KEEP=1 keeps everything for a look).
#
# Exit status: 0 every check passed; 1 a check failed (the message says which, followed by
# diagnostics); 2 a prerequisite is missing.
#
# Environment: NODEGUARD_E2E_IMAGE (busybox image), NODEGUARD_E2E_TIMEOUT (seconds per
# wait, default 180), NODEGUARD_E2E_ROLLOUT_TIMEOUT (default 300), NODEGUARD_E2E_POLICY_TIMEOUT
# (default 240), NODEGUARD_E2E_EVENT_TIMEOUT (violation counts and records, default 30),
# NODEGUARD_E2E_POLL (seconds between polls, default 2), NODEGUARD_E2E_KEEP=1 (no clean-up).

set -euo pipefail

readonly AGENT_NS=nodeguard
readonly AGENT_DS=nodeguard
readonly AGENT_SELECTOR=app.kubernetes.io/name=nodeguard
readonly POLICY_CONFIGMAP=nodeguard-policies
readonly EVENTS_FILE=/var/lib/nodeguard/events/violations.jsonl

# The policy below selects these; tests/unit/test_vagrant_kind.py checks that it selects
# the guarded client only (and that the shipped policies select neither client).
readonly NAMESPACE=agents
readonly GUARDED_LABEL_KEY=app
readonly GUARDED_LABEL_VALUE=research-agent
readonly POLICY_NAME=nodeguard-e2e
readonly POLICY_KEY=nodeguard-e2e.yaml

readonly SERVER_POD=server
readonly GUARDED_POD=client-guarded
readonly UNGUARDED_POD=client-unguarded
readonly SERVER_PORT=8080
readonly BODY=hello-from-nodeguard-e2e
readonly E2E_LABEL=nodeguard.io/e2e

readonly IMAGE=${NODEGUARD_E2E_IMAGE:-docker.io/library/busybox:1.36.1}
readonly TIMEOUT=${NODEGUARD_E2E_TIMEOUT:-180}
readonly ROLLOUT_TIMEOUT=${NODEGUARD_E2E_ROLLOUT_TIMEOUT:-300}
readonly POLICY_TIMEOUT=${NODEGUARD_E2E_POLICY_TIMEOUT:-240}
readonly EVENT_TIMEOUT=${NODEGUARD_E2E_EVENT_TIMEOUT:-30}
readonly POLL=${NODEGUARD_E2E_POLL:-2}
readonly KEEP=${NODEGUARD_E2E_KEEP:-0}

policy_added=0
namespace_created=0
checks=0

# ------------------------------------------------------------------------ output --

say() { printf 'e2e: %s\n' "$*"; }
ok() {
    checks=$((checks + 1))
    printf 'e2e: ok   %s\n' "$*"
}

# die STATUS MESSAGE: a prerequisite is missing (status 2) or a usage error.
die() {
    local status=$1
    shift
    printf 'e2e: error: %s\n' "$*" >&2
    exit "$status"
}

# fail MESSAGE: a check failed. Prints diagnostics, then exits 1 (clean-up runs on exit).
fail() {
    printf 'e2e: FAIL %s\n' "$*" >&2
    diagnostics >&2 || true
    exit 1
}

diagnostics() {
    set +e
    echo "---- diagnostics ----"
    echo "\$ kubectl -n $NAMESPACE get pods -o wide"
    kubectl -n "$NAMESPACE" get pods -o wide 2>&1
    echo "\$ kubectl -n $AGENT_NS get pods -o wide"
    kubectl -n "$AGENT_NS" get pods -o wide 2>&1
    echo "\$ kubectl -n $AGENT_NS logs -l $AGENT_SELECTOR -c agent --tail=30"
    kubectl -n "$AGENT_NS" logs -l "$AGENT_SELECTOR" -c agent --tail=30 2>&1
    echo "---------------------"
}

# ----------------------------------------------------------------------- helpers --

# wait_until SECONDS COMMAND [ARG...]: runs COMMAND every $POLL seconds until it succeeds;
# status 1 when it has not succeeded within SECONDS.
wait_until() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep "$POLL"
    done
}

pod_json() { kubectl -n "$NAMESPACE" get pod "$1" -o json; }

agent_pods() {
    kubectl -n "$AGENT_NS" get pods -l "$AGENT_SELECTOR" -o json | jq -r '.items[].metadata.name'
}

# The agent pod on the node that runs pod $1 of $NAMESPACE.
agent_pod_for() {
    local node
    node=$(pod_json "$1" | jq -r '.spec.nodeName // empty')
    [[ -n $node ]] || return 1
    kubectl -n "$AGENT_NS" get pods -l "$AGENT_SELECTOR" --field-selector "spec.nodeName=$node" \
        -o json | jq -r '.items[0].metadata.name // empty'
}

agent_status() { kubectl -n "$AGENT_NS" exec "$1" -c agent -- nodeguard status --json; }

agent_has_policy() {
    agent_status "$1" | jq -e --arg policy "$POLICY_NAME" \
        '.agent.state == "ready" and any(.policies[]; .name == $policy and .mode == "enforce")' \
        >/dev/null
}

# Pods are matched by uid below, not by name: records and entries of a pod of the same
# name from an earlier run must not count.
pod_uid() { pod_json "$1" | jq -r '.metadata.uid // empty'; }

# guarded_entry AGENT_POD UID: the status entry of that pod when it is under the e2e policy.
guarded_entry() {
    agent_status "$1" | jq -e -c --arg uid "$2" --arg policy "$POLICY_NAME" \
        '.pods[] | select(.uid == $uid and .policy == $policy and .mode == "enforce"
            and .guarded_since != null)'
}

# has_violation AGENT_POD UID
has_violation() {
    agent_status "$1" | jq -e --arg uid "$2" \
        'any(.pods[]; .uid == $uid and .violations >= 1)' >/dev/null
}

# not_guarded AGENT_POD UID: no policy for that pod in the agent's status.
not_guarded() {
    agent_status "$1" | jq -e --arg uid "$2" \
        'all(.pods[]; .uid != $uid or .policy == null)' >/dev/null
}

# records_of AGENT_POD UID: that pod's violation records in the agent's event log (compact
# JSON lines; nothing when the log does not exist yet).
records_of() {
    kubectl -n "$AGENT_NS" exec "$1" -c agent -- tail -n 2000 "$EVENTS_FILE" |
        jq -c --arg uid "$2" 'select(.unmapped.k8s.pod_uid == $uid)'
}

# has_blocked_record AGENT_POD UID IP: a record of that pod for the blocked connect to
# IP:$SERVER_PORT under the e2e policy.
has_blocked_record() {
    records_of "$1" "$2" | jq -e -s --arg ip "$3" --argjson port "$SERVER_PORT" \
        --arg policy "$POLICY_NAME" \
        'any(.[]; .dst_endpoint.ip == $ip and .dst_endpoint.port == $port
            and .policy.name == $policy and .disposition_id == 2)' >/dev/null
}

client_exit_code() {
    pod_json "$1" | jq -r \
        '.status.containerStatuses[]? | select(.name == "client") | .state.terminated.exitCode // empty'
}

client_finished() { [[ -n $(client_exit_code "$1") ]]; }

client_waiting() {
    pod_json "$1" | jq -r '.status.containerStatuses[]? | select(.name == "client")
        | .state.waiting // empty | "\(.reason // "?"): \(.message // "")"' 2>/dev/null || true
}

# --------------------------------------------------------------------- manifests --

# The policy added to the nodeguard-policies ConfigMap, as a merge patch (kubectl patch
# takes YAML). The lines between the markers are the policy file.
policy_patch() {
    cat <<EOF
data:
  $POLICY_KEY: |
    # >>> e2e policy
    apiVersion: nodeguard.io/v1alpha1
    kind: AgentPolicy
    metadata:
      name: nodeguard-e2e
    spec:
      selector:
        namespaces: [agents]
        matchLabels: {app: research-agent}
      mode: enforce
      egress:
        allow: []        # every connect and UDP send is refused (EPERM)
    # <<< e2e policy
EOF
}

namespace_and_server() {
    cat <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
  labels:
    $E2E_LABEL: "true"
---
apiVersion: v1
kind: Pod
metadata:
  name: $SERVER_POD
  namespace: $NAMESPACE
spec:
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: 1
  containers:
    - name: server
      image: $IMAGE
      command:
        - sh
        - -c
        - mkdir -p /www && echo $BODY > /www/index.html && exec httpd -f -p $SERVER_PORT -h /www
      ports:
        - containerPort: $SERVER_PORT
      readinessProbe:
        tcpSocket:
          port: $SERVER_PORT
        periodSeconds: 2
EOF
}

# client_pod NAME URL [LABEL_LINE]
client_pod() {
    cat <<EOF
---
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $NAMESPACE
  labels: {${3:-}}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: $IMAGE
      command: [wget, -q, -T, "10", -O, -, "$2"]
    - name: holder
      image: $IMAGE
      command: [sleep, "3600"]
EOF
}

# ---------------------------------------------------------------------- clean-up --

cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    if [[ $KEEP == 1 ]]; then
        say "NODEGUARD_E2E_KEEP=1: leaving namespace $NAMESPACE and policy key $POLICY_KEY in place"
        exit "$status"
    fi
    if ((namespace_created)); then
        say "clean-up: deleting namespace $NAMESPACE"
        kubectl delete namespace "$NAMESPACE" --ignore-not-found --wait=true \
            --timeout="${TIMEOUT}s" >/dev/null ||
            say "warning: could not delete namespace $NAMESPACE; delete it by hand"
    fi
    if ((policy_added)); then
        say "clean-up: removing $POLICY_KEY from ConfigMap $POLICY_CONFIGMAP"
        kubectl -n "$AGENT_NS" patch configmap "$POLICY_CONFIGMAP" --type json \
            -p "[{\"op\": \"remove\", \"path\": \"/data/$POLICY_KEY\"}]" >/dev/null ||
            say "warning: could not remove $POLICY_KEY from $POLICY_CONFIGMAP; remove it by hand"
    fi
    exit "$status"
}

# -------------------------------------------------------------------------- main --

main() {
    [[ $# -eq 0 ]] || die 2 "no arguments expected (settings come from NODEGUARD_E2E_* variables; see the header of $0)"
    command -v kubectl >/dev/null || die 2 "kubectl not found on PATH"
    command -v jq >/dev/null || die 2 "jq not found on PATH (Debian/Ubuntu: apt-get install jq)"
    kubectl -n "$AGENT_NS" get daemonset "$AGENT_DS" -o name >/dev/null ||
        die 2 "no DaemonSet $AGENT_NS/$AGENT_DS: deploy nodeguard first (kubectl apply -k deploy/kubernetes)"
    kubectl -n "$AGENT_NS" get configmap "$POLICY_CONFIGMAP" -o name >/dev/null ||
        die 2 "no ConfigMap $AGENT_NS/$POLICY_CONFIGMAP: deploy nodeguard first (kubectl apply -k deploy/kubernetes)"

    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    # 1. the DaemonSet
    say "waiting for DaemonSet $AGENT_NS/$AGENT_DS (up to ${ROLLOUT_TIMEOUT}s)"
    kubectl -n "$AGENT_NS" rollout status "daemonset/$AGENT_DS" --timeout="${ROLLOUT_TIMEOUT}s" ||
        fail "DaemonSet $AGENT_NS/$AGENT_DS is not ready after ${ROLLOUT_TIMEOUT}s"
    local agents
    agents=$(agent_pods)
    [[ -n $agents ]] || fail "no nodeguard agent pods (label $AGENT_SELECTOR)"
    ok "DaemonSet ready: $(echo "$agents" | wc -l) agent pod(s)"

    # A namespace left by an earlier run with NODEGUARD_E2E_KEEP=1 is ours to replace; any
    # other namespace of that name is not.
    local existing
    existing=$(kubectl get namespace "$NAMESPACE" -o json --ignore-not-found)
    if [[ -n $existing ]]; then
        if jq -e --arg l "$E2E_LABEL" '.metadata.labels[$l] == "true"' <<<"$existing" >/dev/null; then
            say "deleting namespace $NAMESPACE left by an earlier run"
            kubectl delete namespace "$NAMESPACE" --wait=true --timeout="${TIMEOUT}s" >/dev/null ||
                fail "could not delete namespace $NAMESPACE left by an earlier run"
        else
            die 2 "namespace $NAMESPACE exists and was not created by this script (no label $E2E_LABEL=true): run the e2e on a throwaway cluster"
        fi
    fi

    # 2. the policy
    say "adding policy $POLICY_NAME to ConfigMap $AGENT_NS/$POLICY_CONFIGMAP (key $POLICY_KEY)"
    policy_added=1
    kubectl -n "$AGENT_NS" patch configmap "$POLICY_CONFIGMAP" --type merge -p "$(policy_patch)" >/dev/null ||
        fail "could not patch ConfigMap $AGENT_NS/$POLICY_CONFIGMAP"
    # The kubelet refreshes a ConfigMap volume when it syncs the pod; a changed annotation
    # makes it sync now instead of at its next periodic sync.
    kubectl -n "$AGENT_NS" annotate pods -l "$AGENT_SELECTOR" "$E2E_LABEL-sync=$(date +%s)" \
        --overwrite >/dev/null || true
    local agent
    for agent in $agents; do
        say "waiting for agent $agent to load $POLICY_NAME (up to ${POLICY_TIMEOUT}s)"
        wait_until "$POLICY_TIMEOUT" agent_has_policy "$agent" ||
            fail "agent $agent has not loaded policy $POLICY_NAME (or is not ready) after ${POLICY_TIMEOUT}s: $(agent_status "$agent" 2>&1 | jq -c '{agent, policy_dir}' 2>/dev/null)"
    done
    ok "policy $POLICY_NAME loaded (enforce) by every agent"

    # 3. namespace and server
    say "creating namespace $NAMESPACE and pod $SERVER_POD (busybox httpd on port $SERVER_PORT)"
    namespace_created=1
    namespace_and_server | kubectl apply -f - >/dev/null || fail "could not create namespace $NAMESPACE and pod $SERVER_POD"
    kubectl -n "$NAMESPACE" wait --for=condition=Ready "pod/$SERVER_POD" --timeout="${TIMEOUT}s" >/dev/null ||
        fail "pod $NAMESPACE/$SERVER_POD not ready after ${TIMEOUT}s"
    local server_ip url_host
    server_ip=$(pod_json "$SERVER_POD" | jq -r '.status.podIP // empty')
    [[ -n $server_ip ]] || fail "pod $NAMESPACE/$SERVER_POD has no IP"
    url_host=$server_ip
    [[ $server_ip != *:* ]] || url_host="[$server_ip]"
    ok "server ready at $server_ip:$SERVER_PORT"

    # 4. the two clients
    local url="http://$url_host:$SERVER_PORT/"
    say "starting $GUARDED_POD ($GUARDED_LABEL_KEY=$GUARDED_LABEL_VALUE) and $UNGUARDED_POD (no labels): wget $url"
    {
        client_pod "$GUARDED_POD" "$url" "$GUARDED_LABEL_KEY: $GUARDED_LABEL_VALUE"
        client_pod "$UNGUARDED_POD" "$url"
    } | kubectl apply -f - >/dev/null || fail "could not create the client pods"
    local pod
    for pod in "$UNGUARDED_POD" "$GUARDED_POD"; do
        wait_until "$TIMEOUT" client_finished "$pod" ||
            fail "container client of $NAMESPACE/$pod has not finished after ${TIMEOUT}s (waiting: $(client_waiting "$pod"))"
    done

    # 5. exit codes and logs
    local code logs
    code=$(client_exit_code "$UNGUARDED_POD")
    logs=$(kubectl -n "$NAMESPACE" logs "$UNGUARDED_POD" -c client 2>&1 || true)
    [[ $code == 0 && $logs == *"$BODY"* ]] ||
        fail "$UNGUARDED_POD (not selected by any policy) should have fetched the server's page: exit $code, output: $logs"
    ok "$UNGUARDED_POD connected and got the page (exit 0)"

    code=$(client_exit_code "$GUARDED_POD")
    logs=$(kubectl -n "$NAMESPACE" logs "$GUARDED_POD" -c client 2>&1 || true)
    [[ $code != 0 ]] ||
        fail "$GUARDED_POD reached the server (exit 0, output: $logs): nodeguard did not block its first connect (is the runtime hook configured in containerd? docs/deploy.md)"
    [[ ${logs,,} == *"not permitted"* ]] ||
        fail "$GUARDED_POD failed (exit $code) but not with EPERM; output: $logs"
    ok "$GUARDED_POD was refused at its first connect (exit $code: $logs)"

    # 6. nodeguard status of the agent on each client's node
    local guarded_uid unguarded_uid guarded_agent unguarded_agent entry
    guarded_uid=$(pod_uid "$GUARDED_POD") || true
    unguarded_uid=$(pod_uid "$UNGUARDED_POD") || true
    [[ -n $guarded_uid && -n $unguarded_uid ]] || fail "could not read the uids of the client pods"
    guarded_agent=$(agent_pod_for "$GUARDED_POD") || true
    [[ -n $guarded_agent ]] || fail "no nodeguard agent pod on the node of $NAMESPACE/$GUARDED_POD"
    unguarded_agent=$(agent_pod_for "$UNGUARDED_POD") || true
    [[ -n $unguarded_agent ]] || fail "no nodeguard agent pod on the node of $NAMESPACE/$UNGUARDED_POD"
    entry=$(guarded_entry "$guarded_agent" "$guarded_uid") ||
        fail "nodeguard status on $guarded_agent does not show $NAMESPACE/$GUARDED_POD (uid $guarded_uid) guarded by $POLICY_NAME in enforce mode"
    ok "status ($guarded_agent): $NAMESPACE/$GUARDED_POD guarded: $(jq -c '{policy, mode, selection_reason}' <<<"$entry")"
    wait_until "$EVENT_TIMEOUT" has_violation "$guarded_agent" "$guarded_uid" ||
        fail "nodeguard status on $guarded_agent counts no violation for $NAMESPACE/$GUARDED_POD"
    ok "status ($guarded_agent): violations counted for $NAMESPACE/$GUARDED_POD"
    not_guarded "$unguarded_agent" "$unguarded_uid" ||
        fail "nodeguard status on $unguarded_agent shows $NAMESPACE/$UNGUARDED_POD under a policy (or did not answer); no policy should select it"
    ok "status ($unguarded_agent): $NAMESPACE/$UNGUARDED_POD not guarded"

    # 7. violation records
    wait_until "$EVENT_TIMEOUT" has_blocked_record "$guarded_agent" "$guarded_uid" "$server_ip" ||
        fail "no violation record for $NAMESPACE/$GUARDED_POD -> $server_ip:$SERVER_PORT (blocked, policy $POLICY_NAME) in $EVENTS_FILE on $guarded_agent"
    ok "violation record for the blocked connect to $server_ip:$SERVER_PORT"
    if [[ -n $(records_of "$unguarded_agent" "$unguarded_uid" 2>/dev/null) ]]; then
        fail "violation records exist for $NAMESPACE/$UNGUARDED_POD, which no policy selects"
    fi
    ok "no violation record for $NAMESPACE/$UNGUARDED_POD"
    say "violation records of $NAMESPACE/$GUARDED_POD ($EVENTS_FILE on $guarded_agent):"
    records_of "$guarded_agent" "$guarded_uid" | jq . || say "(could not print them)"

    say "PASS: $checks checks"
}

main "$@"
