"""The demos' example policy: the research agent may reach its model API and run a few
programs; everything else is refused."""

from __future__ import annotations

from typing import Any


def research_agent_policy(api_cidrs: list[str], port: int, exec_allow: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "nodeguard.io/v1alpha1",
        "kind": "AgentPolicy",
        "metadata": {"name": "research-agent"},
        "spec": {
            "selector": {"namespaces": ["agents"], "matchLabels": {"app": "research-agent"}},
            "mode": "enforce",
            "egress": {
                "allow": [
                    {"cidr": cidr, "ports": [str(port)], "protocol": "tcp"} for cidr in api_cidrs
                ]
            },
            "exec": {"allow": exec_allow},
        },
    }
