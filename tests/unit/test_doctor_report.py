"""`nodeguard doctor` rendering, JSON shape and exit code, from hand-made reports."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from nodeguard.bpf import probe
from nodeguard.bpf.probe import (
    EGRESS_MECHANISM,
    EXEC_MECHANISM,
    Feature,
    Report,
    choose_mechanisms,
    headers_release,
)
from nodeguard.cli import doctor

EGRESS_NEEDS = (
    "cgroup2",
    "cgroup_sock_addr.connect4",
    "cgroup_sock_addr.connect6",
    "cgroup_sock_addr.sendmsg4",
    "cgroup_sock_addr.sendmsg6",
    "map.lpm_trie",
    "map.ringbuf",
)
EXEC_NEEDS = (
    "tracefs",
    "tracepoint",
    "helper.send_signal",
    "helper.ancestor_cgroup_id",
)


def _all_ok_features() -> list[Feature]:
    names = sorted(set(EGRESS_NEEDS + EXEC_NEEDS + ("root", "bcc")))
    features = [Feature(n, True, f"{n} works") for n in names]
    features.append(
        Feature(
            "kernel_headers",
            True,
            "headers 6.1.0-56-amd64 used for kernel 6.18.0: safe only because ...",
            fix="install linux-headers-$(uname -r)",
            warning=True,
        )
    )
    features.append(Feature("kprobes", False, "absent: CONFIG_KPROBES is not set", required=False))
    features.append(Feature("bpf_lsm", False, "LSM program load refused (EPERM)", required=False))
    return features


def _report(features: list[Feature]) -> Report:
    by_name = {f.name: f for f in features}
    return Report("6.18.0-test", tuple(features), choose_mechanisms(by_name))


def _replace(features: list[Feature], new: Feature) -> list[Feature]:
    return [new if f.name == new.name else f for f in features]


def _text(report: Report) -> str:
    out = io.StringIO()
    doctor.render_text(report, out)
    return out.getvalue()


def test_all_required_ok_exits_0_and_picks_the_fallback_mechanisms() -> None:
    report = _report(_all_ok_features())
    assert report.ok
    assert doctor.exit_code(report) == 0
    mechs = {m.feature: m for m in report.mechanisms}
    assert mechs["egress"].chosen == EGRESS_MECHANISM
    assert mechs["exec"].chosen == EXEC_MECHANISM
    # LSM refused -> listed as an unavailable alternative
    assert all(not a.available for m in report.mechanisms for a in m.alternatives)


def test_a_missing_optional_feature_does_not_fail() -> None:
    features = _replace(
        _all_ok_features(), Feature("bpffs", False, "not mounted", fix="mount", required=False)
    )
    assert doctor.exit_code(_report(features)) == 0


def test_a_missing_required_feature_exits_1_and_drops_its_mechanism() -> None:
    features = _replace(
        _all_ok_features(),
        Feature("helper.send_signal", False, "load refused", fix="a newer kernel"),
    )
    report = _report(features)
    assert not report.ok
    assert doctor.exit_code(report) == 1
    mechs = {m.feature: m for m in report.mechanisms}
    assert mechs["exec"].chosen is None
    assert mechs["egress"].chosen == EGRESS_MECHANISM
    text = _text(report)
    assert "MISSING" in text
    assert "fix: a newer kernel" in text
    assert "exec: NONE (missing: helper.send_signal)" in text
    assert "NOT READY: missing: helper.send_signal" in text


def test_text_table_lists_every_feature_with_status_and_no_ansi_when_not_a_tty() -> None:
    report = _report(_all_ok_features())
    text = _text(report)
    assert "\x1b[" not in text
    assert "kernel 6.18.0-test" in text
    for feature in report.features:
        assert feature.name in text
    assert "WARNING" in text  # the header mismatch
    assert "fix: install linux-headers-$(uname -r)" in text
    assert "unavailable" in text  # optional, absent
    assert f"egress: {EGRESS_MECHANISM}" in text
    assert f"exec: {EXEC_MECHANISM}" in text
    assert "READY: every required feature is present" in text
    assert all(line == line.rstrip() for line in text.splitlines())


def test_not_checked_features_show_run_as_root() -> None:
    features = _replace(
        _all_ok_features(),
        Feature(
            "tracepoint",
            False,
            "not checked: needs root",
            fix="run as root",
            checked=False,
        ),
    )
    report = _report(features)
    assert report.get("tracepoint").status == "not checked"
    text = _text(report)
    assert "not checked" in text
    assert "fix: run as root" in text
    assert "exec: unknown" in text
    assert "1 required features not checked" in text
    assert doctor.exit_code(report) == 1


def test_json_shape_is_stable() -> None:
    report = _report(_all_ok_features())
    data = json.loads(doctor.render_json(report))
    assert set(data) == {"ok", "kernel", "features", "mechanisms"}
    assert data["ok"] is True
    assert data["kernel"] == "6.18.0-test"
    assert [f["name"] for f in data["features"]] == [f.name for f in report.features]
    for row in data["features"]:
        assert set(row) == {
            "name",
            "ok",
            "required",
            "status",
            "checked",
            "warning",
            "detail",
            "fix",
        }
        assert isinstance(row["ok"], bool)
        assert isinstance(row["required"], bool)
        assert row["fix"] is None or isinstance(row["fix"], str)
    headers = next(r for r in data["features"] if r["name"] == "kernel_headers")
    assert headers["ok"] is True
    assert headers["warning"] is True
    assert headers["status"] == "warning"
    assert set(data["mechanisms"]) == {"egress", "exec", "syscalls", "sockets", "limits"}
    egress = data["mechanisms"]["egress"]
    assert set(egress) == {"ok", "chosen", "needs", "alternatives"}
    assert egress["chosen"] == EGRESS_MECHANISM
    assert egress["alternatives"][0]["available"] is False
    assert set(egress["alternatives"][0]) == {"name", "available", "detail", "checked"}


def test_json_ok_false_when_required_missing() -> None:
    features = _replace(_all_ok_features(), Feature("cgroup2", False, "not mounted"))
    data = json.loads(doctor.render_json(_report(features)))
    assert data["ok"] is False
    assert data["mechanisms"]["egress"]["ok"] is False
    assert data["mechanisms"]["egress"]["chosen"] is None


@pytest.mark.parametrize(
    ("feature", "status"),
    [
        (Feature("a", True, ""), "ok"),
        (Feature("a", True, "", warning=True), "warning"),
        (Feature("a", False, ""), "missing"),
        (Feature("a", False, "", required=False), "unavailable"),
        (Feature("a", False, "", checked=False), "not checked"),
    ],
)
def test_status(feature: Feature, status: str) -> None:
    assert feature.status == status


def test_headers_release_from_utsrelease(tmp_path: Path) -> None:
    tree = tmp_path / "linux-headers-6.1.0-56-amd64"
    (tree / "include" / "generated").mkdir(parents=True)
    (tree / "include" / "generated" / "utsrelease.h").write_text(
        '#define UTS_RELEASE "6.1.0-56-amd64"\n'
    )
    assert headers_release(tree) == "6.1.0-56-amd64"


def test_headers_release_from_directory_name(tmp_path: Path) -> None:
    tree = tmp_path / "linux-headers-5.15.0-100-generic"
    tree.mkdir()
    link = tmp_path / "build"
    link.symlink_to(tree)
    assert headers_release(link) == "5.15.0-100-generic"
    assert headers_release(tmp_path) is None


def test_captured_stderr_catches_file_descriptor_2() -> None:
    with probe._captured_stderr() as captured:
        os.write(2, b"libbcc says hello\n")
    assert captured == ["libbcc says hello\n"]


def test_non_root_never_calls_bpf_and_reports_not_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("bpf() must not be attempted when not root")

    monkeypatch.setattr(probe, "_no_autoload_bpf", forbidden)
    report = probe.run_probes(euid=1000)
    assert not report.ok
    assert doctor.exit_code(report) == 1
    root = report.get("root")
    assert not root.ok
    assert root.fix is not None and "root" in root.fix
    for name in ("bpf_compile", "cgroup_sock_addr.connect4", "tracepoint", "map.ringbuf"):
        feature = report.get(name)
        assert not feature.checked, name
        assert feature.status == "not checked"
    # host checks still ran
    assert report.get("cgroup2").checked
    json.loads(doctor.render_json(report))
