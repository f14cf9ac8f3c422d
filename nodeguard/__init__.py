"""nodeguard: governance-as-code for autonomous AI agents, enforced by eBPF."""

__version__ = "0.1.0"
PRODUCT = "nodeguard"
