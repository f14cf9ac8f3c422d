"""Run the benchmarks as root: ``python -m bench [--quick] [--only NAME]``.

Writes bench/results/latest.json (latest-NAME.json with --only) and prints a Markdown table
for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from bench.guard_bench import (
    bench_connect,
    bench_fork_exec,
    bench_hook_floor,
    bench_null_syscall,
    bench_unguarded_fork_exec,
)
from bench.harness import BENCH_DIR, Comparison, build_binaries
from bench.sandbox_bench import run_sandbox_bench


def table(results: list[Comparison]) -> str:
    rows = [
        "| benchmark | baseline ns/op | nodeguard ns/op | ratio | goal | met |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        goal = f"<= {r.goal_max_ratio:.2f}" if r.goal_max_ratio else "-"
        met = {True: "yes", False: "NO", None: "-"}[r.meets_goal]
        rows.append(
            f"| {r.name} | {r.baseline_ns:,.1f} | {r.subject_ns:,.1f} | {r.ratio:.3f} | "
            f"{goal} | {met} |"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (for a smoke run)")
    ap.add_argument(
        "--only",
        choices=["connect", "forkexec", "syscall", "sandbox", "agent", "stream", "collector"],
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks load eBPF programs: run as root", file=sys.stderr)
        return 2
    bins = build_binaries()
    results: list[Comparison] = []
    started = time.time()
    if args.only in (None, "connect"):
        results.append(bench_hook_floor(bins, args.quick))
        results += bench_connect(bins, args.quick)
    if args.only in (None, "forkexec"):
        results.append(bench_fork_exec(bins, args.quick))
        results.append(bench_unguarded_fork_exec(bins, args.quick))
    if args.only in (None, "syscall"):
        results.append(bench_null_syscall(bins, args.quick))
    sandbox_out: dict[str, object] = {}
    if args.only in (None, "sandbox"):
        sandbox_results, sandbox_out = run_sandbox_bench(bins, args.quick)
        results += sandbox_results
    agent_out: dict[str, object] = {}
    if args.only in (None, "agent"):
        from bench.agent_bench import run_agent_bench  # noqa: PLC0415 - needs containerd

        measured, _, extra = run_agent_bench(args.quick)
        agent_out = {"latencies": [m.as_dict() for m in measured], **extra}
        for m in measured:
            goal = f" (goal p99 <= {m.goal_p99_ms:.0f} ms)" if m.goal_p99_ms else ""
            print(f"{m.name}: p50 {m.p50:.1f} ms, p99 {m.p99:.1f} ms, n={len(m.values_ms)}{goal}")
        print("agent:", ", ".join(f"{k}={v}" for k, v in extra.items()))
    stream_out: dict[str, object] = {}
    if args.only in (None, "stream"):
        from bench.stream_bench import run_stream_bench  # noqa: PLC0415 - needs containerd

        stream_out = run_stream_bench(bins, args.quick)
        print("stream:", json.dumps(stream_out, indent=1))
    collector_out: dict[str, object] = {}
    if args.only in (None, "collector"):
        from bench.collector_bench import run_collector_bench  # noqa: PLC0415

        collector_out = run_collector_bench(args.quick)
        print("collector:", json.dumps(collector_out, indent=1))
    out = {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "duration_s": round(time.time() - started, 1),
        "results": [r.as_dict() for r in results],
        "sandbox": sandbox_out,
        "agent": agent_out,
        "stream": stream_out,
        "collector": collector_out,
    }
    name = "latest.json" if args.only is None else f"latest-{args.only}.json"
    path = BENCH_DIR / "results" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(table(results))
    print(f"\n(written to {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
