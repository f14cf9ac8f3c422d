"""The errors a user meets before anything is loaded: each one message with its fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nodeguard.bpf.guard import import_bcc
from nodeguard.cli.main import main
from nodeguard.errors import BccMissingError, CgroupError, KernelFeatureError
from nodeguard.identity.cgroupfs import find_cgroup2_mount, require_cgroup2_mount
from nodeguard.runner.preflight import require_headers

HYBRID = """\
25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
"""
PURE_V2 = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
V1_ONLY = "27 25 0:25 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
ESCAPED = "30 1 0:26 / /mnt/my\\040cgroups rw - cgroup2 none rw\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HYBRID, Path("/sys/fs/cgroup/unified")),
        (PURE_V2, Path("/sys/fs/cgroup")),
        (ESCAPED, Path("/mnt/my cgroups")),
        (V1_ONLY, None),
    ],
)
def test_cgroup2_mount_is_read_from_mountinfo(
    tmp_path: Path, text: str, expected: Path | None
) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(text)
    assert find_cgroup2_mount(info) == expected


def test_no_cgroup2_is_a_clear_error(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(V1_ONLY)
    with pytest.raises(CgroupError) as err:
        require_cgroup2_mount(info)
    assert "cgroup v2 is not mounted" in str(err.value) and "fix: mount" in str(err.value)


def test_missing_headers_is_a_clear_error() -> None:
    with pytest.raises(KernelFeatureError) as err:
        require_headers("0.0.0-no-such-kernel")
    assert "kernel headers not found" in str(err.value)
    assert "scripts/setup.sh" in str(err.value)


def test_missing_bcc_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bcc", None)  # makes `import bcc` raise ImportError
    with pytest.raises(BccMissingError) as err:
        import_bcc()
    assert "python3-bpfcc" in str(err.value) and "--system-site-packages" in str(err.value)


def test_cli_prints_errors_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: a}\nspec: {}\n"
    )
    code = main(["run", "--policy", str(policy), "--", "/bin/true"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("nodeguard: error: nodeguard must run as root")
    assert "fix: run it with sudo" in err
