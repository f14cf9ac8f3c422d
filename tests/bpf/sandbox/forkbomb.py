"""A fork bomb for tests/bpf/test_sandbox.py, bounded in time, that first moves itself
into a cgroup v1 pids group the test made as a safety net (pids.max) in case nodeguard
fails to stop it. usage: forkbomb.py PIDS_CGROUP_DIR SECONDS

The top process only starts the bomb and waits, so the run lasts until the deadline
whatever the bomb's processes suffer."""

import os
import sys
import time

pids_dir, seconds = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + seconds
with open(os.path.join(pids_dir, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
print(f"bomb started {time.time()}", flush=True)
if os.fork() == 0:
    while time.monotonic() < deadline:
        try:
            os.fork()
        except OSError:
            time.sleep(0.001)
    os._exit(0)
while time.monotonic() < deadline + 0.5:
    time.sleep(0.05)
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
print("bomb over", flush=True)
