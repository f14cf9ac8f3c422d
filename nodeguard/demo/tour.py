"""`nodeguard demo`: test hosts, an example policy and a hijacked agent, end to end.

Everything the demo touches is its own: two test hosts in network namespaces it creates
(an "LLM API" it may reach and an "exfiltration server" it may not), a temporary
directory, and the cgroup `nodeguard run` creates. All of it is removed at the end.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from nodeguard.demo.policy import research_agent_policy
from nodeguard.lab.netns import SYSTEM_PYTHON, NetLab
from nodeguard.runner.preflight import require_root
from nodeguard.runner.session import RunOptions, RunSession

AGENT = Path(__file__).with_name("rogue_agent.py")


def demo_policy(api_ip4: str, api_ip6: str) -> dict[str, Any]:
    return research_agent_policy(
        [f"{api_ip4}/32", f"{api_ip6}/128"],
        443,
        [SYSTEM_PYTHON, "/usr/bin/python3*", "/usr/bin/ls"],
    )


def run_demo(console: Console | None = None) -> int:
    require_root()
    out = console or Console(stderr=False)
    with tempfile.TemporaryDirectory(prefix="nodeguard-demo-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        lab = NetLab(workdir=work).start()
        try:
            api = lab.add_host("llm-api", [443], [])
            exfil = lab.add_host("exfil", [443], [53])
            policy_file = work / "research-agent.yaml"
            policy_file.write_text(yaml.safe_dump(demo_policy(api.ip4, api.ip6), sort_keys=False))
            events = work / "violations.jsonl"
            out.rule("[bold]nodeguard demo")
            out.print(
                f"test hosts: llm-api {api.ip4} (allowed, tcp/443), exfil {exfil.ip4} "
                "(not in the policy)"
            )
            out.print(f"policy ({policy_file.name}):")
            out.print(policy_file.read_text().rstrip(), markup=False, highlight=False)
            out.rule("the agent runs under `nodeguard run`")
            session = RunSession(
                RunOptions(
                    policy_file=policy_file,
                    command=[
                        SYSTEM_PYTHON,
                        str(AGENT),
                        "--netns",
                        lab.client_netns_path,
                        "--api",
                        api.ip4,
                        "--exfil",
                        exfil.ip4,
                        "--workdir",
                        str(work),
                    ],
                    events=str(events),
                    # the demo agent joins the lab's network namespace itself (setns needs
                    # root); a real agent should run unprivileged (the default under sudo)
                    user="root",
                )
            )
            status = session.run()
            received = [r for r in exfil.received()]
            out.rule("what the security team gets")
            records = [json.loads(line) for line in events.read_text().splitlines()]
            out.print(_table(records))
            out.print(f"the exfil host received {len(received)} connections or datagrams")
            if records:
                out.print("one record, as OCSF JSON (what a SIEM ingests):")
                out.print_json(json.dumps(records[0]))
            out.print(
                f"\ncommand exit status {status}; all cgroups, programs and test hosts "
                "are removed now"
            )
            return 0 if not received else 1
        finally:
            lab.close()


def _table(records: list[dict[str, Any]]) -> Table:
    t = Table(title="violations (OCSF)", show_lines=False)
    for col in ("class", "disposition", "what", "process", "count"):
        t.add_column(col)
    for r in records:
        if r.get("class_uid") == 4001:
            dst = r.get("dst_endpoint", {})
            proto = r.get("connection_info", {}).get("protocol_name")
            what = f"{proto} {dst.get('ip')}:{dst.get('port')}"
        else:
            what = r.get("process", {}).get("file", {}).get("path", "?")
        proc = r.get("actor", {}).get("process", {})
        t.add_row(
            str(r.get("class_name")),
            str(r.get("disposition")),
            what,
            f"{proc.get('name')}[{proc.get('pid')}]",
            str(r.get("count", 1)),
        )
    return t


if __name__ == "__main__":
    sys.exit(run_demo())
