"""The agent's enforcement state: which policy versions are in the kernel, which pod
cgroups are guarded by which of them, and the transitions between states.

Transitions keep every guarded pod enforced at every instant:

- a changed policy is loaded under a new policy id first, then each pod is re-pointed to
  it (one 8-byte map update per pod), then the old id's rules are removed;
- a pod is attached once (an earlier agent's attachment is adopted, never doubled);
- a pod that is gone is detached and its aggregates are flushed before they are deleted.

Not thread-safe by itself: the daemon serialises calls with one lock.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nodeguard import log
from nodeguard.agent.selection import Selection, select_policy
from nodeguard.bpf.guard import Guard
from nodeguard.errors import NodeguardError
from nodeguard.events.model import PolicyRef, WorkloadRef
from nodeguard.identity.cgroup_paths import find_pod_cgroup
from nodeguard.identity.cgroupfs import cgroup_id
from nodeguard.identity.pods import PodInfo
from nodeguard.policy.compiled import CompiledPolicy
from nodeguard.policy.model import AgentPolicy

_log = log.get("nodeguard.agent.enforcer")


@dataclass(slots=True)
class LoadedPolicy:
    policy: AgentPolicy
    compiled: CompiledPolicy
    policy_id: int
    loaded_at: float

    @property
    def ref(self) -> PolicyRef:
        c = self.compiled
        return PolicyRef(name=c.name, uid=c.uid, version=c.version, mode=c.mode)


@dataclass(slots=True)
class PodState:
    """A pod the agent has seen, guarded or not, and why."""

    pod: PodInfo
    selection: Selection
    cgroup: Path | None = None
    cgid: int | None = None
    policy: str | None = None  # the policy it is guarded by (None: not guarded)
    guarded_since: float | None = None
    error: str | None = None
    container_cgids: dict[int, str] = field(default_factory=dict)  # cgroup id -> container id


class Enforcer:
    def __init__(
        self,
        guard: Guard,
        mount: Path,
        on_pod_removed: Callable[[int], None] | None = None,
    ) -> None:
        self.guard = guard
        self.mount = mount
        self.policies: dict[str, LoadedPolicy] = {}
        self.refs: dict[int, PolicyRef] = {}  # policy id -> ref, for event building
        self.pods: dict[str, PodState] = {}  # pod uid -> state
        self._by_cgid: dict[int, tuple[PodState, str | None]] = {}
        # cgroup id -> (the index entry it was built from, its WorkloadRef): one per record
        self._workloads: dict[int, tuple[tuple[PodState, str | None], WorkloadRef]] = {}
        self._retired: set[int] = set()  # ids to unload once nothing points at them
        self._on_pod_removed = on_pod_removed

    # ------------------------------------------------------------- policies ---
    def apply_policies(self, policies: Mapping[str, tuple[AgentPolicy, CompiledPolicy]]) -> bool:
        """Make ``policies`` the policy set. Changed ones are loaded under new ids first;
        pods are re-pointed by :meth:`reconcile`. Returns True when anything changed."""
        changed = False
        for name, (policy, compiled) in sorted(policies.items()):
            current = self.policies.get(name)
            if current is not None and current.compiled == compiled:
                current.policy = policy  # same rules; keep the loaded id
                continue
            policy_id = self.guard.load_policy(compiled)
            loaded = LoadedPolicy(policy, compiled, policy_id, time.time())
            self.refs[policy_id] = loaded.ref
            self.policies[name] = loaded
            if current is not None:
                self._retired.add(current.policy_id)
            changed = True
            _log.info("policy_loaded", policy=name, version=compiled.version, policy_id=policy_id)
        for name in set(self.policies) - set(policies):
            self._retired.add(self.policies.pop(name).policy_id)
            changed = True
            _log.info("policy_removed", policy=name)
        return changed

    def _unload_retired(self) -> None:
        in_use = {
            self.policies[s.policy].policy_id
            for s in self.pods.values()
            if s.policy is not None and s.policy in self.policies
        }
        for policy_id in sorted(self._retired - in_use):
            self.guard.unload_policy(policy_id)
            self._retired.discard(policy_id)
            # refs stay: late records of that id must still be attributed

    # ----------------------------------------------------------------- pods ---
    def reconcile(self, pods: list[PodInfo]) -> None:
        """Bring every pod to its desired state; forget pods that are gone."""
        seen: set[str] = set()
        for pod in pods:
            seen.add(pod.uid)
            self.ensure(pod)
        for uid in set(self.pods) - seen:
            self.remove(uid)
        self._unload_retired()

    def select(self, pod: PodInfo) -> Selection:
        agent_policies = [lp.policy for lp in self.policies.values()]
        return select_policy(pod.namespace, pod.pod_labels, agent_policies)

    def ensure(self, pod: PodInfo) -> PodState:
        """Guard (or re-point, or release) one pod according to the current policies."""
        selection = self.select(pod)
        state = self.pods.get(pod.uid)
        if state is None:
            state = PodState(pod=pod, selection=selection)
            self.pods[pod.uid] = state
        state.pod, state.selection = pod, selection
        desired = selection.policy.name if selection.policy is not None else None
        if desired is None:
            if state.policy is not None:
                self._release(state)
            state.error = None
            return state
        loaded = self.policies[desired]
        if state.cgroup is None or not state.cgroup.exists():
            state.cgroup = find_pod_cgroup(self.mount, pod.uid)
            if state.cgroup is None:
                state.error = "pod cgroup not found yet"
                return state
        try:
            if state.policy is None or state.cgid not in self.guard.guarded:
                state.cgid = self.guard.guard(self.mount, state.cgroup, loaded.policy_id)
                state.guarded_since = time.time()
                _log.info(
                    "pod_guarded",
                    pod=pod.ref,
                    policy=desired,
                    cgroup=str(state.cgroup),
                    adopted=self.guard.adopted,
                )
            elif self.guard.guarded_policy(state.cgid) != loaded.policy_id:
                self.guard.repoint(state.cgid, loaded.policy_id)
                _log.info("pod_repointed", pod=pod.ref, policy=desired)
            state.policy = desired
            state.error = None
        except NodeguardError as err:
            state.error = str(err)
            _log.warning("pod_guard_failed", pod=pod.ref, error=str(err))
        self._index(state)
        return state

    def _index(self, state: PodState) -> None:
        if state.cgid is None or state.cgroup is None:
            return
        self._by_cgid[state.cgid] = (state, None)
        with contextlib.suppress(OSError):
            for child in state.cgroup.iterdir():
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        self._by_cgid[cgroup_id(child)] = (state, child.name)

    def _release(self, state: PodState) -> None:
        if state.cgid is not None:
            self.guard.unguard(state.cgid)
            if self._on_pod_removed is not None:
                self._on_pod_removed(state.cgid)
        _log.info("pod_released", pod=state.pod.ref, policy=state.policy)
        state.policy = None
        state.guarded_since = None

    def remove(self, uid: str) -> None:
        state = self.pods.pop(uid, None)
        if state is None:
            return
        if state.policy is not None:
            self._release(state)
        for cgid in [c for c, (s, _) in self._by_cgid.items() if s is state]:
            del self._by_cgid[cgid]

    # --------------------------------------------------------------- lookups ---
    def workload_of(self, cgid: int) -> WorkloadRef | None:
        found = self._by_cgid.get(cgid)
        if found is None:
            # A container started since the last reconcile: its cgroup is new. Re-index
            # the guarded pods' container cgroups (a handful of directories) and retry.
            for state in self.pods.values():
                if state.policy is not None:
                    self._index(state)
            found = self._by_cgid.get(cgid)
        if found is None:
            return None
        cached = self._workloads.get(cgid)
        if cached is not None and cached[0] is found:  # same index entry: same answer
            return cached[1]
        state, container_id = found
        pod = state.pod
        container = next((c for c in pod.containers if c.id == container_id), None)
        ref = WorkloadRef(
            namespace=pod.namespace,
            pod_name=pod.name,
            pod_uid=pod.uid,
            pod_labels=dict(pod.pod_labels),
            container_id=container_id,
            container_name=container.name if container else None,
            image=container.image if container else None,
            image_id=container.image_ref if container else None,
        )
        if len(self._workloads) >= 4096:
            self._workloads.clear()
        self._workloads[cgid] = (found, ref)
        return ref

    def stale_cgroup_entries(self) -> list[int]:
        """cgroup_policy entries no pod of ours accounts for (pods deleted while no agent
        ran): their cgroups, and so their attachments, are gone."""
        ours = {s.cgid for s in self.pods.values() if s.cgid is not None}
        table = self.guard.table("cgroup_policy")
        return [int(k.value) for k in table.keys() if int(k.value) not in ours]  # noqa: SIM118

    def drop_cgroup_entries(self, cgids: list[int]) -> None:
        table = self.guard.table("cgroup_policy")
        for cgid in cgids:
            with contextlib.suppress(KeyError):
                del table[ct.c_uint64(cgid)]
