"""Policy selection: Kubernetes label-selector semantics and the most-specific-wins rule."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from nodeguard.agent.selection import (
    Selection,
    Specificity,
    requirement_matches,
    select_policy,
    selector_matches,
    specificity,
)
from nodeguard.policy import AgentPolicy
from nodeguard.policy.model import LabelSelectorRequirement, Selector


def policy(name: str, selector: dict[str, Any] | None) -> AgentPolicy:
    spec: dict[str, Any] = {} if selector is None else {"selector": selector}
    return AgentPolicy.model_validate(
        {
            "apiVersion": "nodeguard.io/v1alpha1",
            "kind": "AgentPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def sel(**parts: Any) -> Selector:
    data = {
        {"labels": "matchLabels", "exprs": "matchExpressions"}.get(k, k): v
        for k, v in parts.items()
    }
    return Selector.model_validate(data)


def req(key: str, operator: str, values: list[str] | None = None) -> LabelSelectorRequirement:
    data: dict[str, Any] = {"key": key, "operator": operator}
    if values is not None:
        data["values"] = values
    return LabelSelectorRequirement.model_validate(data)


# ----------------------------------------------------------------- operators --

# (operator, values, labels, matches)
OPERATOR_CASES: list[tuple[str, list[str] | None, dict[str, str], bool]] = [
    ("In", ["a", "b"], {"k": "a"}, True),
    ("In", ["a", "b"], {"k": "b"}, True),
    ("In", ["a", "b"], {"k": "c"}, False),
    ("In", ["a"], {}, False),  # absent key never matches In
    ("In", ["a"], {"K": "a"}, False),  # keys are case-sensitive
    ("In", ["a"], {"k": "A"}, False),  # values too
    ("In", [""], {"k": ""}, True),  # the empty value is a value
    ("In", [""], {}, False),
    ("NotIn", ["a", "b"], {"k": "c"}, True),
    ("NotIn", ["a", "b"], {"k": "a"}, False),
    ("NotIn", ["a"], {}, True),  # absent key matches NotIn (as in Kubernetes)
    ("NotIn", ["a"], {"other": "a"}, True),
    ("NotIn", [""], {"k": ""}, False),
    ("Exists", None, {"k": "anything"}, True),
    ("Exists", None, {"k": ""}, True),  # an empty value still exists
    ("Exists", None, {}, False),
    ("Exists", None, {"other": "x"}, False),
    ("DoesNotExist", None, {}, True),
    ("DoesNotExist", None, {"other": "x"}, True),
    ("DoesNotExist", None, {"k": ""}, False),
    ("DoesNotExist", None, {"k": "x"}, False),
]


@pytest.mark.parametrize(("operator", "values", "labels", "matches"), OPERATOR_CASES)
def test_operators(
    operator: str, values: list[str] | None, labels: dict[str, str], matches: bool
) -> None:
    assert requirement_matches(req("k", operator, values), labels) is matches


# ----------------------------------------------------------------- selectors --


def test_no_selector_selects_nothing() -> None:
    assert not selector_matches(None, "default", {})
    assert not selector_matches(None, "agents", {"app": "x"})


def test_empty_selector_selects_every_pod() -> None:
    for empty in (sel(), sel(namespaces=[]), sel(labels={}), sel(exprs=[]), sel(namespaces=None)):
        assert selector_matches(empty, "default", {})
        assert selector_matches(empty, "kube-system", {"app": "x"})


def test_namespaces() -> None:
    s = sel(namespaces=["agents", "research"])
    assert selector_matches(s, "agents", {})
    assert selector_matches(s, "research", {"a": "b"})
    assert not selector_matches(s, "default", {})
    assert not selector_matches(s, "Agents", {})
    assert not selector_matches(s, "", {})


def test_match_labels_all_must_equal() -> None:
    s = sel(labels={"app": "research", "tier": "sandbox"})
    assert selector_matches(s, "ns", {"app": "research", "tier": "sandbox", "extra": "1"})
    assert not selector_matches(s, "ns", {"app": "research"})
    assert not selector_matches(s, "ns", {"app": "research", "tier": "prod"})
    assert not selector_matches(s, "ns", {})


def test_match_labels_empty_value() -> None:
    s = sel(labels={"flag": ""})
    assert selector_matches(s, "ns", {"flag": ""})
    assert not selector_matches(s, "ns", {})  # absent is not the empty string


def test_all_parts_are_anded() -> None:
    s = sel(
        namespaces=["agents"],
        labels={"app": "r"},
        exprs=[{"key": "env", "operator": "In", "values": ["prod"]}],
    )
    assert selector_matches(s, "agents", {"app": "r", "env": "prod"})
    assert not selector_matches(s, "other", {"app": "r", "env": "prod"})
    assert not selector_matches(s, "agents", {"app": "x", "env": "prod"})
    assert not selector_matches(s, "agents", {"app": "r", "env": "dev"})
    assert not selector_matches(s, "agents", {"app": "r"})


def test_every_expression_must_hold() -> None:
    s = sel(
        exprs=[
            {"key": "app", "operator": "Exists"},
            {"key": "debug", "operator": "DoesNotExist"},
            {"key": "tier", "operator": "NotIn", "values": ["prod"]},
        ]
    )
    assert selector_matches(s, "ns", {"app": "a"})
    assert selector_matches(s, "ns", {"app": "a", "tier": "dev"})
    assert not selector_matches(s, "ns", {"app": "a", "tier": "prod"})
    assert not selector_matches(s, "ns", {"app": "a", "debug": "1"})
    assert not selector_matches(s, "ns", {})


def test_contradictory_selector_selects_nothing() -> None:
    s = sel(exprs=[{"key": "a", "operator": "Exists"}, {"key": "a", "operator": "DoesNotExist"}])
    assert not selector_matches(s, "ns", {})
    assert not selector_matches(s, "ns", {"a": "1"})


# --------------------------------------------------------------- specificity --


def test_specificity() -> None:
    assert specificity(sel()) == Specificity(0, 0)
    assert specificity(sel(namespaces=[])) == Specificity(0, 0)
    assert specificity(sel(namespaces=["a", "b"])) == Specificity(1, 0)
    assert specificity(sel(labels={"a": "1", "b": "2"})) == Specificity(0, 2)
    both = sel(namespaces=["a"], labels={"a": "1"}, exprs=[{"key": "x", "operator": "Exists"}])
    assert specificity(both) == Specificity(1, 2)
    # a namespace restriction outweighs any number of label requirements
    assert Specificity(1, 0) > Specificity(0, 5)


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (Specificity(0, 0), "empty selector"),
        (Specificity(1, 0), "namespaces"),
        (Specificity(0, 1), "1 label"),
        (Specificity(1, 2), "namespaces+2 labels"),
    ],
)
def test_specificity_describe(spec: Specificity, text: str) -> None:
    assert spec.describe() == text


# ----------------------------------------------------------------- selection --

RESEARCH = policy(
    "research-agent", {"namespaces": ["agents"], "matchLabels": {"app": "r", "team": "ml"}}
)
BASELINE = policy("baseline", {"matchLabels": {"app": "r"}})
AGENTS_NS = policy("agents-default", {"namespaces": ["agents"]})
EVERYTHING = policy("everything", {})
UNSELECTED = policy("no-selector", None)
ALL = [RESEARCH, BASELINE, AGENTS_NS, EVERYTHING, UNSELECTED]


def test_no_match() -> None:
    result = select_policy("default", {"app": "r"}, [RESEARCH, AGENTS_NS, UNSELECTED])
    assert result == Selection(None, (), "no policy selects this pod (3 policies checked)")
    assert result.name is None
    assert select_policy("x", {}, []).reason == "no policy selects this pod (0 policies checked)"
    assert "1 policy checked" in select_policy("x", {}, [UNSELECTED]).reason


def test_single_match() -> None:
    result = select_policy("default", {"app": "r"}, [RESEARCH, BASELINE, UNSELECTED])
    assert result.policy is BASELINE
    assert result.name == "baseline"
    assert result.candidates == ("baseline",)
    assert result.reason == "matched baseline (1 label)"


def test_most_specific_wins() -> None:
    labels = {"app": "r", "team": "ml"}
    result = select_policy("agents", labels, ALL)
    assert result.name == "research-agent"
    assert result.candidates == ("research-agent", "agents-default", "baseline", "everything")
    assert result.reason == (
        "matched research-agent (namespaces+2 labels); "
        "also matched agents-default (namespaces), less specific; "
        "also matched baseline (1 label), less specific; "
        "also matched everything (empty selector), less specific"
    )


def test_namespace_restriction_beats_more_labels() -> None:
    many = policy("many-labels", {"matchLabels": {"a": "1", "b": "2", "c": "3"}})
    result = select_policy("agents", {"a": "1", "b": "2", "c": "3"}, [many, AGENTS_NS])
    assert result.name == "agents-default"


def test_expressions_count_like_labels() -> None:
    expr = policy(
        "by-expressions",
        {
            "matchExpressions": [
                {"key": "app", "operator": "In", "values": ["r"]},
                {"key": "debug", "operator": "DoesNotExist"},
            ]
        },
    )
    result = select_policy("default", {"app": "r"}, [BASELINE, expr])
    assert result.name == "by-expressions"


def test_tie_goes_to_lowest_name() -> None:
    a = policy("alpha", {"matchLabels": {"app": "r"}})
    b = policy("beta", {"matchExpressions": [{"key": "app", "operator": "Exists"}]})
    result = select_policy("ns", {"app": "r"}, [b, a])
    assert result.name == "alpha"
    assert result.candidates == ("alpha", "beta")
    assert result.reason == (
        "matched alpha (1 label); also matched beta (1 label), equally specific, "
        "alpha sorts first by name"
    )


def test_result_does_not_depend_on_policy_order() -> None:
    extra = [
        policy("a-tie", {"namespaces": ["agents"], "matchLabels": {"app": "r", "x": "y"}}),
        policy("z-tie", {"namespaces": ["agents"], "matchLabels": {"app": "r", "team": "ml"}}),
    ]
    labels = {"app": "r", "team": "ml", "x": "y"}
    outcomes = {
        json.dumps([r.name, r.candidates, r.reason])
        for r in (
            select_policy("agents", labels, list(order))
            for order in itertools.permutations([*ALL, *extra])
        )
    }
    assert len(outcomes) == 1
    (outcome,) = outcomes
    assert json.loads(outcome)[0] == "a-tie"  # ties with research-agent and z-tie: name order


def test_label_values_are_compared_exactly() -> None:
    result = select_policy("default", {"app": "R"}, [BASELINE])
    assert result.policy is None


def test_documented_example() -> None:
    """The example in docs/agent-config.md."""
    research = policy(
        "research-agent",
        {"namespaces": ["agents"], "matchLabels": {"app": "research-agent", "team": "ml"}},
    )
    baseline = policy("agents-baseline", {"namespaces": ["agents"]})
    ml_team = policy(
        "ml-team",
        {
            "matchLabels": {"team": "ml"},
            "matchExpressions": [
                {"key": "app", "operator": "Exists"},
                {"key": "debug", "operator": "DoesNotExist"},
            ],
        },
    )
    policies = [ml_team, baseline, research]
    result = select_policy("agents", {"app": "research-agent", "team": "ml"}, policies)
    assert result.reason == (
        "matched research-agent (namespaces+2 labels); also matched agents-baseline "
        "(namespaces), less specific; also matched ml-team (3 labels), less specific"
    )
    assert select_policy("agents", {"app": "other"}, policies).name == "agents-baseline"
    assert select_policy("default", {"team": "ml", "app": "x"}, policies).name == "ml-team"
