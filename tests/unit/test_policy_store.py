"""PolicyStore: last good set, all-or-nothing reloads, and inotify change detection."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodeguard.agent.policy_store import (
    PolicyDirectoryError,
    PolicyStore,
    is_editor_temp_name,
    is_policy_file_name,
)
from nodeguard.bpf.abi import MAX_PORT_RANGES

RENDERED = re.compile(r"^[^:\n]+:\d+: [^:\n]+: .+$")


def doc(name: str, cidr: str = "10.0.0.0/8", *, extra: str = "") -> str:
    return (
        "apiVersion: nodeguard.io/v1alpha1\n"
        "kind: AgentPolicy\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        "  selector: {namespaces: [agents]}\n"
        f"  egress: {{allow: [{{cidr: {cidr}}}]}}\n"
        f"{extra}"
    )


def write(path: Path, text: str) -> None:
    """Write like an editor that saves atomically: temp file, then rename."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    tmp.replace(path)


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    return directory


@pytest.fixture
def store(pdir: Path) -> Iterator[PolicyStore]:
    with PolicyStore(pdir) as s:
        s.watch()
        yield s


def versions(store: PolicyStore) -> dict[str, str]:
    return {name: lp.compiled.version for name, lp in store.policies.items()}


def later(delay_s: float, action: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay_s)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# ---------------------------------------------------------------------- names --


@pytest.mark.parametrize(
    ("name", "policy"),
    [
        ("a.yaml", True),
        ("a.yml", True),
        ("research-agent.yaml", True),
        ("a.json", False),
        ("a.yaml.bak", False),
        ("a.yaml~", False),
        (".a.yaml", False),
        (".#a.yaml", False),
        ("#a.yaml#", False),
        (".a.yaml.swp", False),
        ("..data", False),
        ("README", False),
    ],
)
def test_policy_file_names(name: str, policy: bool) -> None:
    assert is_policy_file_name(name) is policy


@pytest.mark.parametrize(
    ("name", "temp"),
    [
        (".a.yaml.swp", True),
        (".a.yaml.swx", True),
        ("a.yaml~", True),
        (".#a.yaml", True),
        ("#a.yaml#", True),
        ("4913", True),
        ("a.yaml", False),
        ("..data", False),
        ("..data_tmp", False),
        ("..2024_01_01_00_00_00.123", False),
    ],
)
def test_editor_temp_names(name: str, temp: bool) -> None:
    assert is_editor_temp_name(name) is temp


# --------------------------------------------------------------------- reload --


def test_missing_directory_is_an_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(PolicyDirectoryError) as info:
        PolicyStore(tmp_path / "nope")
    assert "does not exist" in str(info.value)
    assert info.value.fix is not None and "mkdir -p" in info.value.fix
    (tmp_path / "file").write_text("")
    with pytest.raises(PolicyDirectoryError, match="not a directory"):
        PolicyStore(tmp_path / "file")


def test_empty_directory_is_valid(store: PolicyStore) -> None:
    assert store.generation == 0
    result = store.reload()
    assert (result.changed, result.error, dict(result.policies), result.generation) == (
        True,
        None,
        {},
        1,
    )
    again = store.reload()
    assert (again.changed, again.generation) == (False, 1)


def test_loads_every_file(pdir: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", doc("alpha"))
    write(pdir / "b.yml", doc("beta") + "---\n" + doc("gamma"))
    result = store.reload()
    assert result.changed and result.error is None
    assert list(result.policies) == ["alpha", "beta", "gamma"]
    policy, compiled = result.policies["beta"]
    assert policy.name == compiled.name == "beta"
    assert compiled.egress is not None
    assert store.snapshot().loaded_at is not None


def test_unchanged_content_is_not_a_change(pdir: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", doc("alpha", extra="  exec: {allow: [/bin/a, /bin/b]}\n"))
    first = store.reload()
    # same bytes again
    write(pdir / "a.yaml", doc("alpha", extra="  exec: {allow: [/bin/a, /bin/b]}\n"))
    assert store.reload().changed is False
    # same meaning, other spelling: comments, rule order, moved to another file
    (pdir / "a.yaml").unlink()
    write(
        pdir / "z.yaml", "# moved\n" + doc("alpha", extra="  exec:\n    allow: [/bin/b, /bin/a]\n")
    )
    result = store.reload()
    assert (result.changed, result.generation) == (False, first.generation)
    assert result.policies is first.policies


def test_change_is_a_change(pdir: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", doc("alpha"))
    before = store.reload()
    write(pdir / "a.yaml", doc("alpha", "10.1.0.0/16"))
    after = store.reload()
    assert after.changed and after.generation == before.generation + 1
    assert after.policies["alpha"].compiled.version != before.policies["alpha"].compiled.version
    # metadata counts too (it is shown in status and events)
    write(
        pdir / "a.yaml",
        doc("alpha", "10.1.0.0/16").replace("{name: alpha}", "{name: alpha, labels: {t: x}}"),
    )
    assert store.reload().changed


def test_invalid_change_keeps_last_good_and_fix_clears(pdir: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", doc("alpha"))
    write(pdir / "b.yaml", doc("beta"))
    good = store.reload()
    write(pdir / "b.yaml", doc("beta", "10.0.0.1/8"))  # host bits set
    write(pdir / "c.yaml", doc("gamma"))  # a valid addition is not applied either
    bad = store.reload()
    assert bad.changed is False
    assert bad.policies is good.policies and bad.generation == good.generation
    assert bad.error is not None and store.last_error == bad.error
    assert bad.error == f"{pdir / 'b.yaml'}:6: spec.egress.allow[0].cidr: " + (
        "'10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8? (or 10.0.0.1/32 for that "
        "single address)"
    )
    assert [p.path for p in bad.problems] == ["spec.egress.allow[0].cidr"]
    assert store.last_error_at is not None
    first_seen = store.last_error_at
    assert store.snapshot().error_count == 1

    # the same error again keeps its first time
    (pdir / "b.yaml").touch()
    time.sleep(0.01)
    assert store.reload().error == bad.error
    assert store.last_error_at == first_seen

    write(pdir / "b.yaml", doc("beta", "10.2.0.0/16"))
    fixed = store.reload()
    assert fixed.changed and fixed.error is None
    assert store.last_error is None
    assert store.last_error_at is None
    assert list(fixed.policies) == ["alpha", "beta", "gamma"]
    assert fixed.generation == good.generation + 1


def test_reverting_a_broken_file_clears_the_error(pdir: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", doc("alpha"))
    good = store.reload()
    write(pdir / "a.yaml", "spec: [\n")
    assert store.reload().error is not None
    write(pdir / "a.yaml", doc("alpha"))
    result = store.reload()
    assert (result.changed, result.error, result.generation) == (False, None, good.generation)


def test_every_problem_of_every_file_is_reported(pdir: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", doc("alpha", "nonsense"))
    write(pdir / "b.yaml", doc("beta").replace("egress", "egres"))
    error = store.reload().error
    assert error is not None
    lines = error.splitlines()
    assert len(lines) == 2
    assert all(RENDERED.match(line) for line in lines), lines
    assert lines[0].startswith(f"{pdir / 'a.yaml'}:6: spec.egress.allow[0].cidr:")
    assert lines[1].startswith(f"{pdir / 'b.yaml'}:6: spec.egres: unknown key")


def test_first_load_invalid_has_no_good_set(pdir: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", "kind: Nonsense\n")
    result = store.reload()
    assert (result.changed, result.generation, dict(result.policies)) == (False, 0, {})
    assert result.error is not None


def test_compile_errors_make_the_state_invalid(pdir: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", doc("alpha"))
    good = store.reload()
    ports = ", ".join(str(1 + 2 * i) for i in range(MAX_PORT_RANGES + 1))
    write(pdir / "a.yaml", doc("alpha", f"10.0.0.0/8, ports: [{ports}]"))
    result = store.reload()
    assert result.error is not None and f"at most {MAX_PORT_RANGES}" in result.error
    assert result.policies is good.policies


def test_duplicate_names_across_files_are_invalid(pdir: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", doc("alpha"))
    good = store.reload()
    write(pdir / "b.yaml", doc("alpha", "10.9.0.0/16"))
    result = store.reload()
    assert result.error is not None and "duplicate policy name 'alpha'" in result.error
    assert f"{pdir / 'b.yaml'}:3: metadata.name:" in result.error
    assert result.policies is good.policies


def test_deleting_a_file_removes_its_policies(pdir: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", doc("alpha"))
    write(pdir / "b.yaml", doc("beta"))
    store.reload()
    (pdir / "b.yaml").unlink()
    result = store.reload()
    assert result.changed and list(result.policies) == ["alpha"]
    (pdir / "a.yaml").unlink()
    result = store.reload()
    assert result.changed and dict(result.policies) == {}


def test_ignored_files(pdir: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", doc("alpha"))
    for junk in (".#a.yaml", "a.yaml~", ".a.yaml.swp", "#a.yaml#", ".hidden.yaml", "notes.txt"):
        (pdir / junk).write_text("this: [is not valid\n")
    (pdir / "sub.yaml").mkdir()  # a directory with a policy-like name
    (pdir / "sub.yaml" / "x.yaml").write_text(doc("nested"))  # not recursive
    (pdir / "dangling.yaml").symlink_to(pdir / "missing.yaml")
    result = store.reload()
    assert result.error is None
    assert list(result.policies) == ["alpha"]
    assert [p.name for p in store.policy_files()] == ["a.yaml"]


def test_directory_removed_later_keeps_last_good(pdir: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", doc("alpha"))
    good = store.reload()
    shutil.rmtree(pdir)
    result = store.reload()
    assert result.policies is good.policies
    assert result.error is not None and "cannot read the policy directory" in result.error
    pdir.mkdir()
    write(pdir / "a.yaml", doc("alpha"))
    result = store.reload()
    assert (result.changed, result.error) == (False, None)


def test_symlinked_files_are_read_through(pdir: Path, tmp_path: Path, store: PolicyStore) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    write(outside / "real.yaml", doc("alpha"))
    (pdir / "a.yaml").symlink_to(outside / "real.yaml")
    assert list(store.reload().policies) == ["alpha"]


# -------------------------------------------------------------------- watching --


def test_wait_without_watch_starts_watching(pdir: Path) -> None:
    with PolicyStore(pdir) as s:
        assert s.wait_for_change(0) is True  # a change may have been missed
        assert s.wait_for_change(0.02) is False


def test_valid_change_wakes_the_watcher(pdir: Path, store: PolicyStore) -> None:
    # How fast is measured in bench/ (policy change -> enforced), not asserted here.
    write(pdir / "a.yaml", doc("alpha"))
    store.reload()
    assert store.wait_for_change(0) is True  # the write before the first reload
    assert store.wait_for_change(0.03) is False

    def change() -> None:
        write(pdir / "a.yaml", doc("alpha", "10.3.0.0/16"))

    thread = later(0.02, change)
    assert store.wait_for_change(5.0) is True
    result = store.reload()
    thread.join()
    assert result.changed


def test_new_and_removed_files_wake(pdir: Path, store: PolicyStore) -> None:
    store.reload()
    (pdir / "b.yaml").write_text(doc("beta"))
    assert store.wait_for_change(1.0)
    assert list(store.reload().policies) == ["beta"]
    (pdir / "b.yaml").unlink()
    assert store.wait_for_change(1.0)
    assert dict(store.reload().policies) == {}


def test_editor_temp_files_do_not_wake(pdir: Path, store: PolicyStore) -> None:
    store.reload()
    (pdir / ".a.yaml.swp").write_text("x")
    (pdir / "a.yaml~").write_text("x")
    (pdir / ".#a.yaml").symlink_to("user@host.1234")
    assert store.wait_for_change(0.05) is False


def test_debounce_makes_a_burst_one_change(pdir: Path, store: PolicyStore) -> None:
    store.reload()

    def burst() -> None:
        for i in range(5):  # events 5 ms apart, like an editor's write, fsync, rename
            (pdir / f".tmp{i}").write_text(doc("alpha"))
            (pdir / f".tmp{i}").replace(pdir / "a.yaml")
            time.sleep(0.005)

    thread = later(0.0, burst)
    assert store.wait_for_change(1.0) is True
    thread.join()
    assert store.wait_for_change(0.05) is False  # the burst was consumed
    assert list(store.reload().policies) == ["alpha"]


def test_configmap_symlink_swap(pdir: Path, store: PolicyStore) -> None:
    """The kubelet's atomic writer: ..<ts>/ holds the files, ..data -> ..<ts>, and every
    key is a symlink name.yaml -> ..data/name.yaml. An update writes a new ..<ts>/,
    renames a new ..data_tmp over ..data, adds/removes key links, deletes the old dir."""
    old = pdir / "..2024_01_01_00_00_00.1"
    old.mkdir()
    (old / "a.yaml").write_text(doc("alpha"))
    (old / "b.yaml").write_text(doc("beta"))
    (pdir / "..data").symlink_to(old.name)
    for key in ("a.yaml", "b.yaml"):
        (pdir / key).symlink_to(f"..data/{key}")
    first = store.reload()
    assert list(first.policies) == ["alpha", "beta"]
    assert store.wait_for_change(0.1) is True  # setting it up
    assert store.wait_for_change(0.03) is False

    new = pdir / "..2024_01_01_00_01_00.2"
    new.mkdir()
    (new / "a.yaml").write_text(doc("alpha", "10.7.0.0/16"))
    (new / "c.yaml").write_text(doc("gamma"))
    (pdir / "..data_tmp").symlink_to(new.name)
    os.rename(pdir / "..data_tmp", pdir / "..data")
    (pdir / "c.yaml").symlink_to("..data/c.yaml")
    (pdir / "b.yaml").unlink()
    shutil.rmtree(old)

    assert store.wait_for_change(1.0) is True
    result = store.reload()
    assert result.changed and result.error is None
    assert list(result.policies) == ["alpha", "gamma"]
    assert result.policies["alpha"].compiled.version != first.policies["alpha"].compiled.version


def test_configmap_swap_alone_wakes(pdir: Path, store: PolicyStore) -> None:
    """Only the ..data rename happens (same keys, new content)."""
    old = pdir / "..1"
    old.mkdir()
    (old / "a.yaml").write_text(doc("alpha"))
    (pdir / "..data").symlink_to(old.name)
    (pdir / "a.yaml").symlink_to("..data/a.yaml")
    new = pdir / "..2"
    new.mkdir()
    (new / "a.yaml").write_text(doc("alpha", "10.8.0.0/16"))
    (pdir / "..data_tmp").symlink_to(new.name)
    first = store.reload()
    while store.wait_for_change(0.03):
        pass
    os.rename(pdir / "..data_tmp", pdir / "..data")
    assert store.wait_for_change(1.0) is True
    result = store.reload()
    assert result.changed
    assert result.policies["alpha"].compiled.version != first.policies["alpha"].compiled.version


def test_in_place_edit_through_symlink_wakes(
    pdir: Path, tmp_path: Path, store: PolicyStore
) -> None:
    outside = tmp_path / "checkout"
    outside.mkdir()
    (outside / "real.yaml").write_text(doc("alpha"))
    (pdir / "a.yaml").symlink_to(outside / "real.yaml")
    store.reload()
    while store.wait_for_change(0.03):
        pass
    (outside / "unrelated.txt").write_text("x")  # other files there do not count
    assert store.wait_for_change(0.05) is False
    (outside / "real.yaml").write_text(doc("alpha", "10.4.0.0/16"))
    assert store.wait_for_change(1.0) is True
    assert store.reload().changed


def test_directory_replaced_wakes(pdir: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", doc("alpha"))
    store.reload()
    while store.wait_for_change(0.03):
        pass
    shutil.rmtree(pdir)
    assert store.wait_for_change(1.0) is True
    assert store.reload().error is not None
    pdir.mkdir()
    write(pdir / "a.yaml", doc("alpha", "10.5.0.0/16"))
    assert store.wait_for_change(1.0) is True
    result = store.reload()
    assert (result.changed, result.error) == (True, None)
    # and the new directory is watched
    while store.wait_for_change(0.03):
        pass
    write(pdir / "b.yaml", doc("beta"))
    assert store.wait_for_change(1.0) is True
    assert list(store.reload().policies) == ["alpha", "beta"]


def test_directory_swapped_by_rename(pdir: Path, tmp_path: Path, store: PolicyStore) -> None:
    write(pdir / "a.yaml", doc("alpha"))
    store.reload()
    while store.wait_for_change(0.03):
        pass
    staged = tmp_path / "staged"
    staged.mkdir()
    write(staged / "a.yaml", doc("alpha", "10.6.0.0/16"))
    pdir.rename(tmp_path / "old")
    staged.rename(pdir)
    assert store.wait_for_change(1.0) is True
    result = store.reload()
    assert result.changed and result.error is None


def test_timeout_returns_false(store: PolicyStore) -> None:
    start = time.monotonic()
    assert store.wait_for_change(0.05) is False
    assert time.monotonic() - start >= 0.04  # it did wait
