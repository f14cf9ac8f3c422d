"""Helper process for test_pinning: load a pinned Guard, guard a cgroup, report, wait.

The test SIGKILLs it to play an agent that dies without cleaning up.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from nodeguard.bpf.guard import Guard
from nodeguard.identity.cgroupfs import find_cgroup2_mount
from nodeguard.policy import compile_policy, load_policy_file


def main() -> None:
    pin_root, cgroup, policy_file = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    mount = find_cgroup2_mount()
    assert mount is not None
    guard = Guard(pin_root=pin_root)
    (policy,) = load_policy_file(policy_file)
    policy_id = guard.load_policy(compile_policy(policy))
    guard.guard(mount, cgroup, policy_id)
    print("ready", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
