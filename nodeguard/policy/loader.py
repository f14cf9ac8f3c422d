"""Read policy files: YAML -> validated :class:`AgentPolicy` objects, or every problem.

YAML is parsed with PyYAML's compose API, so every value keeps its line; the plain data
built from the nodes is validated by the pydantic schema in :mod:`nodeguard.policy.model`
and each validation error is mapped back to ``file:line: path: message``. Duplicate keys
(which PyYAML would silently resolve to the last one) are reported too.

Every loaded policy carries its :class:`~nodeguard.policy.model.SourceMap`
(``policy.source``), so later stages (the compiler) can locate their problems as well.
"""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from nodeguard.errors import PolicyError, PolicyProblem
from nodeguard.policy.model import (
    API_VERSION,
    ERROR_TYPE,
    KIND,
    AgentPolicy,
    FieldPath,
    SourceMap,
    describe,
    render_path,
)

StrPath = str | os.PathLike[str]

# Placeholder paths for problems that are not about one field.
FILE_PATH = "(file)"
YAML_PATH = "(yaml)"
DOCUMENT_PATH = "(document)"

# A policy is small; this bounds alias expansion ("billion laughs") and runaway input.
MAX_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"

# Keys users may reasonably write that this version does not support yet.
_NOT_YET = {"filesystem", "files"}
# Other words for spec keys that exist.
_SPEC_SYNONYMS = {"budget": "limits", "budgets": "limits", "quota": "limits", "quotas": "limits"}

_MISSING_HINTS = {
    "apiVersion": f"add 'apiVersion: {API_VERSION}'",
    "kind": f"add 'kind: {KIND}'",
    "metadata": "add 'metadata: {name: my-agent}'",
    "name": "every policy needs a unique name",
    "spec": "add a 'spec' with the rules (e.g. 'spec: {egress: {allow: []}}')",
    "allow": "use 'allow: []' to deny everything",
    "cidr": "e.g. 'cidr: 10.0.0.0/8'",
    "rate": "e.g. '{rate: 10, burst: 30}', or just the rate: 'execsPerSecond: 10'",
}
# Hints for missing keys that depend on where they are missing.
_MISSING_PATH_HINTS: dict[FieldPath, str] = {
    ("spec", "syscalls", "deny"): "list what to deny, e.g. 'deny: [ptrace, \"@mount\"]'",
    ("spec", "sockets", "deny"): "list what to deny, e.g. 'deny: [raw, packet]'",
}


class _TooLargeError(Exception):
    """The document expands to more than MAX_NODES nodes."""


@dataclass
class _Document:
    """One YAML document as plain data, with the line of every value and key."""

    data: Any
    line: int
    lines: dict[FieldPath, int] = field(default_factory=dict)
    key_lines: dict[FieldPath, int] = field(default_factory=dict)
    # Values that could not be read (now None): validation errors about them are noise.
    unreadable: list[FieldPath] = field(default_factory=list)

    def is_unreadable(self, path: FieldPath) -> bool:
        return any(path[: len(bad)] == bad or bad[: len(path)] == path for bad in self.unreadable)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Builder:
    """Turns a composed node tree into plain data and line maps, noting problems."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[PolicyProblem] = []
        self._constructor = yaml.constructor.SafeConstructor()
        self._active: set[int] = set()
        self._count = 0

    def document(self, node: yaml.Node) -> _Document:
        doc = _Document(data=None, line=_line(node))
        try:
            doc.data = self._value(node, (), doc)
        except _TooLargeError:
            self._problem(
                _line(node),
                (),
                f"document has more than {MAX_NODES} values (alias expansion?); "
                "write the policy out plainly",
            )
            doc.data = None
        return doc

    def _problem(self, line: int, path: FieldPath, message: str) -> None:
        rendered = render_path(path) or DOCUMENT_PATH
        self.problems.append(PolicyProblem(self.file, line, rendered, message))

    def _value(self, node: yaml.Node, path: FieldPath, doc: _Document) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            raise _TooLargeError
        doc.lines[path] = _line(node)
        if id(node) in self._active:
            self._problem(_line(node), path, "recursive YAML alias; remove the alias")
            doc.unreadable.append(path)
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path, doc)
            if isinstance(node, yaml.SequenceNode):
                return [self._value(item, (*path, i), doc) for i, item in enumerate(node.value)]
            return self._scalar(node, path, doc)
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.Node, path: FieldPath, doc: _Document) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as err:
            reason = getattr(err, "problem", None) or str(err)
            self._problem(_line(node), path, f"cannot read this value: {reason}")
            doc.unreadable.append(path)
            return None

    def _mapping(self, node: yaml.MappingNode, path: FieldPath, doc: _Document) -> Any:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if key is None:
                continue
            key_path = (*path, key)
            if key in out:
                self._problem(
                    _line(key_node),
                    key_path,
                    f"duplicate key {key!r} (first at line {doc.key_lines[key_path]}); "
                    "YAML keeps only the last one, so merge the two or remove one",
                )
            doc.key_lines[key_path] = _line(key_node)
            out[key] = self._value(value_node, key_path, doc)
        return out

    def _key(self, node: yaml.Node, path: FieldPath) -> str | None:
        if node.tag == _MERGE_TAG:
            self._problem(
                _line(node), path, "YAML merge keys ('<<') are not supported; write the keys out"
            )
            return None
        if not isinstance(node, yaml.ScalarNode):
            self._problem(_line(node), path, "mapping keys must be plain strings")
            return None
        return str(node.value)


# --------------------------------------------------------------------- YAML parsing --


def _yaml_error_problem(file: str, text: str, err: yaml.YAMLError) -> PolicyProblem:
    last_line = max(1, len(text.splitlines()))  # PyYAML may point just past the end
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        message = f"invalid YAML: {err.problem}"
        if err.context:
            context_line = err.context_mark.line + 1 if err.context_mark else None
            where = f" (line {context_line})" if context_line else ""
            message += f", {err.context}{where}"
        if "'@'" in (err.problem or ""):
            message += "; a value starting with '@' must be quoted (\"@mount\")"
        line = min(err.problem_mark.line + 1, last_line)
        return PolicyProblem(file, line, YAML_PATH, message)
    if isinstance(err, yaml.reader.ReaderError):
        line = text[: err.position].count("\n") + 1
        char = chr(err.character) if isinstance(err.character, int) else err.character
        message = f"invalid character {char!r}: YAML allows no control characters; remove it"
        return PolicyProblem(file, line, YAML_PATH, message)
    return PolicyProblem(file, 1, YAML_PATH, f"invalid YAML: {err}")


def _compose(text: str, file: str) -> tuple[list[yaml.Node], list[PolicyProblem]]:
    """Every document node up to the first YAML syntax error (which is reported)."""
    nodes: list[yaml.Node] = []
    problems: list[PolicyProblem] = []
    try:
        loader = yaml.SafeLoader(text)  # checks for unprintable characters first
    except yaml.YAMLError as err:
        return nodes, [_yaml_error_problem(file, text, err)]
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                nodes.append(node)
    except yaml.YAMLError as err:
        problems.append(_yaml_error_problem(file, text, err))
    finally:
        loader.dispose()
    return nodes, problems


def single_document(
    text: str, file: str, what: str
) -> tuple[_Document | None, list[PolicyProblem]]:
    """A configuration file that is one YAML document (``what``: "the agent
    configuration", ...): the document with its line maps (None for an empty file), or
    the problems (syntax errors, a second document, unreadable values)."""
    nodes, problems = _compose(text, file)
    if problems:
        return None, problems
    if not nodes:
        return None, []
    if len(nodes) > 1:
        message = f"{what} is one YAML document; remove the extra '---'"
        return None, [PolicyProblem(file, _line(nodes[1]), DOCUMENT_PATH, message)]
    builder = _Builder(file)
    doc = builder.document(nodes[0])
    if builder.problems:
        return None, builder.problems
    return doc, []


# ----------------------------------------------------------------------- validation --


def _data_path(error: ErrorDetails, data: Any) -> FieldPath:
    """The path in the document that a pydantic error ``loc`` is about.

    ``loc`` may hold elements that are not in the data (union member names, ``[key]``);
    they are skipped. A missing key keeps its name at the end of the path.
    """
    path: list[str | int] = []
    cur = data
    loc = error["loc"]
    for i, elem in enumerate(loc):
        in_dict = isinstance(cur, dict) and isinstance(elem, str) and elem in cur
        in_list = isinstance(cur, list) and isinstance(elem, int) and 0 <= elem < len(cur)
        if in_dict or in_list:
            cur = cur[elem]
        elif not (error["type"] == "missing" and i == len(loc) - 1):
            continue
        path.append(elem)
    return tuple(path)


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``annotation`` (``list[M] | None`` -> ``M``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The schema model describing the mapping at ``loc`` (aliases, list indexes)."""
    model: type[BaseModel] | None = AgentPolicy
    for elem in loc:
        if model is None:
            return None
        if isinstance(elem, int):
            continue
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        if elem not in fields:
            return None
        model = _inner_model(fields[elem].annotation)
    return model


def _unknown_key_message(error: ErrorDetails, path: FieldPath) -> str:
    key = str(path[-1]) if path else "?"
    model = _model_at(error["loc"][:-1])
    allowed = [f.alias or n for n, f in model.model_fields.items()] if model else []
    message = f"unknown key {key!r}"
    close = difflib.get_close_matches(key, allowed, n=1)
    if path[:-1] == ("spec",) and key in _NOT_YET:
        message += " (not supported by this version of nodeguard yet)"
    elif path[:-1] == ("spec",) and key in _SPEC_SYNONYMS:
        message += f" (did you mean {_SPEC_SYNONYMS[key]!r}?)"
    elif close:
        message += f" (did you mean {close[0]!r}?)"
    if allowed:
        message += f"; allowed here: {', '.join(allowed)}"
    return message


def _type_message(expected: str, value: Any) -> str:
    message = f"expected {expected}, got {describe(value)}"
    if expected == "a string" and (value is None or isinstance(value, bool | int | float)):
        message += "; put it in quotes"
    return message


def _literal_message(error: ErrorDetails, path: FieldPath) -> str:
    value = error["input"]
    if path == ("apiVersion",):
        return f"unsupported apiVersion {value!r}; this nodeguard reads '{API_VERSION}'"
    if path == ("kind",):
        return f"kind is {value!r}; nodeguard policy documents are 'kind: {KIND}'"
    expected = (error.get("ctx") or {}).get("expected", "")
    got = repr(value) if isinstance(value, str) else describe(value)
    message = f"{got} is not allowed here; use one of {expected}"
    if isinstance(value, bool):
        message += " (YAML reads unquoted yes/no/on/off as booleans)"
    return message


_TYPE_NAMES = {
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "int_type": "a number",
    "bool_type": "a boolean",
}


def _message(error: ErrorDetails, path: FieldPath) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == ERROR_TYPE:
        return str(ctx["message"])
    if kind == "missing":
        name = str(path[-1]) if path else "?"
        hint = _MISSING_PATH_HINTS.get(path) or _MISSING_HINTS.get(name)
        return f"missing required key {name!r}" + (f"; {hint}" if hint else "")
    if kind == "extra_forbidden":
        return _unknown_key_message(error, path)
    if kind == "literal_error":
        return _literal_message(error, path)
    if kind in _TYPE_NAMES:
        return _type_message(_TYPE_NAMES[kind], error["input"])
    return str(error["msg"])


def _problem_from_error(error: ErrorDetails, doc: _Document, file: str) -> PolicyProblem:
    path = _data_path(error, doc.data)
    at = (error.get("ctx") or {}).get("at") if error["type"] == ERROR_TYPE else None
    message = _message(error, path)
    if at:
        path = (*path, str(at))
    source = SourceMap(file, doc.line, doc.lines)
    line = doc.key_lines.get(path) if error["type"] == "extra_forbidden" else None
    return PolicyProblem(
        file, line or source.line_of(path), render_path(path) or DOCUMENT_PATH, message
    )


def _validate(doc: _Document, file: str) -> tuple[AgentPolicy | None, list[PolicyProblem]]:
    data = doc.data
    if data is None:
        message = "empty document; remove the extra '---' or write a policy in it"
        return None, [PolicyProblem(file, doc.line, DOCUMENT_PATH, message)]
    if not isinstance(data, dict):
        message = (
            f"a policy document must be a mapping with apiVersion, kind, metadata and spec; "
            f"got {describe(data)}"
        )
        return None, [PolicyProblem(file, doc.line, DOCUMENT_PATH, message)]
    try:
        policy = AgentPolicy.model_validate(data)
    except ValidationError as err:
        errors = [e for e in err.errors() if not doc.is_unreadable(_data_path(e, data))]
        problems = [_problem_from_error(e, doc, file) for e in errors]
        if "kind" in data and data["kind"] != KIND:
            # Another kind of document: its other "errors" would only be noise.
            problems = [p for p in problems if p.path == "kind"]
        return None, problems
    policy.attach_source(SourceMap(file, doc.line, doc.lines))
    return policy, []


# ---------------------------------------------------------------------- public API --


def duplicate_name_problems(policies: Iterable[AgentPolicy]) -> list[PolicyProblem]:
    """A problem for every policy whose name an earlier one already uses."""
    first: dict[str, AgentPolicy] = {}
    problems: list[PolicyProblem] = []
    for policy in policies:
        earlier = first.setdefault(policy.name, policy)
        if earlier is policy:
            continue
        where = "another policy"
        if earlier.source is not None:
            line = earlier.source.line_of(("metadata", "name"))
            where = f"{earlier.source.file}:{line}"
        problems.append(
            policy.problem_at(
                ("metadata", "name"),
                f"duplicate policy name {policy.name!r} (already used at {where}); "
                "policy names must be unique: rename one",
            )
        )
    return problems


def parse_policy_text(
    text: str, filename: str = "<string>"
) -> tuple[list[AgentPolicy], list[PolicyProblem]]:
    """Every valid policy in ``text`` and every problem found (never raises for bad input)."""
    nodes, problems = _compose(text, filename)
    builder = _Builder(filename)
    policies: list[AgentPolicy] = []
    for node in nodes:
        doc = builder.document(node)
        if builder.problems:
            problems.extend(builder.problems)
            builder.problems = []
        policy, found = _validate(doc, filename)
        problems.extend(found)
        if policy is not None:
            policies.append(policy)
    if not nodes and not problems:
        problems.append(
            PolicyProblem(
                filename,
                1,
                DOCUMENT_PATH,
                f"no policy in this file; add an 'apiVersion: {API_VERSION}', "
                f"'kind: {KIND}' document",
            )
        )
    problems.extend(duplicate_name_problems(policies))
    problems.sort(key=lambda p: p.line)
    return policies, problems


def read_policy_file(path: StrPath) -> tuple[list[AgentPolicy], list[PolicyProblem]]:
    """Like :func:`parse_policy_text` for a file; an unreadable file is a problem too."""
    name = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        reason = err.strerror or str(err)
        return [], [PolicyProblem(name, 1, FILE_PATH, f"cannot read policy file: {reason}")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        message = "not valid UTF-8 text; save the policy file as UTF-8"
        return [], [PolicyProblem(name, line, FILE_PATH, message)]
    return parse_policy_text(text, name)


def load_policy_text(text: str, filename: str = "<string>") -> list[AgentPolicy]:
    """Parse and validate every policy in ``text``; raise PolicyError listing all problems."""
    policies, problems = parse_policy_text(text, filename)
    if problems:
        raise PolicyError(problems)
    return policies


def load_policy_file(path: StrPath) -> list[AgentPolicy]:
    """Parse and validate every policy in a file; raise PolicyError listing all problems."""
    policies, problems = read_policy_file(path)
    if problems:
        raise PolicyError(problems)
    return policies


def load_policy_files(paths: Iterable[StrPath]) -> list[AgentPolicy]:
    """All policies of all files, or PolicyError listing every problem in every file.

    Policy names must be unique across the files too.
    """
    policies: list[AgentPolicy] = []
    problems: list[PolicyProblem] = []
    for path in paths:
        found, file_problems = read_policy_file(path)
        policies.extend(found)
        problems.extend(file_problems)
    reported = {p.render() for p in problems}  # names duplicated within one file
    problems.extend(p for p in duplicate_name_problems(policies) if p.render() not in reported)
    if problems:
        raise PolicyError(problems)
    return policies
