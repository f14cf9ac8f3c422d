"""Which policy guards a pod: Kubernetes label-selector semantics for ``spec.selector``.

Matching (every given part must hold, AND):

- ``namespaces``: the pod's namespace is one of them; absent or empty: any namespace.
- ``matchLabels``: every key is on the pod with exactly that value.
- ``matchExpressions``: ``In`` (key present, value in ``values``), ``NotIn`` (key absent,
  or value not in ``values``), ``Exists`` (key present), ``DoesNotExist`` (key absent).
  As in Kubernetes, ``NotIn`` and ``DoesNotExist`` match pods without the key.
- A policy without ``spec.selector`` selects no pod. An empty selector (``selector: {}``)
  selects every pod on the node, as an empty Kubernetes label selector does.

When several policies select a pod, the most specific selector wins. Specificity is the
tuple (restricts namespaces ? 1 : 0, number of matchLabels entries + matchExpressions
entries), compared as a tuple, so a namespace restriction outweighs any number of label
requirements; a tie goes to the policy name that sorts first. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from nodeguard.policy.model import AgentPolicy, LabelSelectorRequirement, Selector


class Specificity(NamedTuple):
    """How narrow a selector is; compared as a tuple (greater is more specific)."""

    namespaces: int  # 1 when the selector names namespaces, else 0
    requirements: int  # matchLabels entries + matchExpressions entries

    def describe(self) -> str:
        """``namespaces+2 labels``, ``1 label``, ``namespaces``, ``empty selector``."""
        parts = ["namespaces"] if self.namespaces else []
        if self.requirements:
            plural = "" if self.requirements == 1 else "s"
            parts.append(f"{self.requirements} label{plural}")
        return "+".join(parts) or "empty selector"


@dataclass(frozen=True, slots=True)
class Selection:
    """The outcome of :func:`select_policy` for one pod."""

    policy: AgentPolicy | None  # the winner; None: no policy selects the pod
    candidates: tuple[str, ...]  # names of every matching policy, winner first
    reason: str  # one line for people (``nodeguard status``, logs)

    @property
    def name(self) -> str | None:
        return None if self.policy is None else self.policy.name


def requirement_matches(requirement: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    """One ``matchExpressions`` entry against a pod's labels."""
    present = requirement.key in labels
    values = requirement.values or ()
    match requirement.operator:
        case "In":
            return present and labels[requirement.key] in values
        case "NotIn":
            return not present or labels[requirement.key] not in values
        case "Exists":
            return present
        case "DoesNotExist":
            return not present
    raise AssertionError(f"unknown operator {requirement.operator!r}")  # pragma: no cover


def selector_matches(selector: Selector | None, namespace: str, labels: Mapping[str, str]) -> bool:
    """True when ``selector`` selects a pod in ``namespace`` with ``labels``.

    ``None`` (a policy without a selector) selects nothing.
    """
    if selector is None:
        return False
    if selector.namespaces and namespace not in selector.namespaces:
        return False
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    return all(requirement_matches(r, labels) for r in selector.match_expressions or ())


def specificity(selector: Selector) -> Specificity:
    """The ranking key of a selector (see the module docstring)."""
    return Specificity(
        namespaces=1 if selector.namespaces else 0,
        requirements=len(selector.match_labels or {}) + len(selector.match_expressions or ()),
    )


def _rank(policy: AgentPolicy) -> tuple[int, int, str]:
    selector = policy.spec.selector
    assert selector is not None  # only matching policies are ranked
    spec = specificity(selector)
    return (-spec.namespaces, -spec.requirements, policy.name)


def _reason(ranked: Sequence[AgentPolicy], checked: int) -> str:
    if not ranked:
        noun = "policy" if checked == 1 else "policies"
        return f"no policy selects this pod ({checked} {noun} checked)"
    winner = ranked[0]
    assert winner.spec.selector is not None
    best = specificity(winner.spec.selector)
    text = f"matched {winner.name} ({best.describe()})"
    for other in ranked[1:]:
        assert other.spec.selector is not None
        spec = specificity(other.spec.selector)
        if spec == best:
            verdict = f"equally specific, {winner.name} sorts first by name"
        else:
            verdict = "less specific"
        text += f"; also matched {other.name} ({spec.describe()}), {verdict}"
    return text


def select_policy(
    namespace: str, labels: Mapping[str, str], policies: Sequence[AgentPolicy]
) -> Selection:
    """The policy that guards a pod in ``namespace`` with ``labels``, and why.

    Deterministic whatever the order of ``policies``: the most specific matching
    selector wins, ties go to the lowest policy name.
    """
    matching = [p for p in policies if selector_matches(p.spec.selector, namespace, labels)]
    ranked = sorted(matching, key=_rank)
    return Selection(
        policy=ranked[0] if ranked else None,
        candidates=tuple(p.name for p in ranked),
        reason=_reason(ranked, len(policies)),
    )
