"""Policy layer: parse, validate and compile AgentPolicy documents.

``load_policy_files`` -> ``compile_policies`` -> CompiledPolicy objects for the kernel
maps (:mod:`nodeguard.bpf.maps`). Every problem is a PolicyProblem with file, line and
field path; a policy loaded from a file keeps its source map (``policy.source``).
"""

from __future__ import annotations

from nodeguard.policy.compile import (
    compile_policies,
    compile_policy,
    display_network,
    policy_uid,
    policy_version,
)
from nodeguard.policy.compiled import (
    CompiledLimits,
    CompiledPolicy,
    CompiledSockets,
    CompiledSyscalls,
    EgressEntry,
    ExecEntry,
    PortRule,
    Rate,
    SocketDeny,
)
from nodeguard.policy.loader import (
    duplicate_name_problems,
    load_policy_file,
    load_policy_files,
    load_policy_text,
    parse_policy_text,
    read_policy_file,
)
from nodeguard.policy.model import API_VERSION, KIND, AgentPolicy, SourceMap

__all__ = [
    "API_VERSION",
    "KIND",
    "AgentPolicy",
    "CompiledLimits",
    "CompiledPolicy",
    "CompiledSockets",
    "CompiledSyscalls",
    "EgressEntry",
    "ExecEntry",
    "PortRule",
    "Rate",
    "SocketDeny",
    "SourceMap",
    "compile_policies",
    "compile_policy",
    "display_network",
    "duplicate_name_problems",
    "load_policy_file",
    "load_policy_files",
    "load_policy_text",
    "parse_policy_text",
    "policy_uid",
    "policy_version",
    "read_policy_file",
]
