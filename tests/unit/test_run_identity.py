from __future__ import annotations

import pwd

import pytest

from nodeguard.errors import NodeguardError
from nodeguard.runner.identity import resolve_user

NOBODY = pwd.getpwnam("nobody")


def test_sudo_caller_is_the_default() -> None:
    env = {"SUDO_UID": str(NOBODY.pw_uid), "SUDO_GID": str(NOBODY.pw_gid)}
    run_as = resolve_user(None, env)
    assert (run_as.uid, run_as.gid, run_as.name) == (NOBODY.pw_uid, NOBODY.pw_gid, "nobody")


def test_without_sudo_the_current_user_is_kept() -> None:
    import os  # noqa: PLC0415

    assert resolve_user(None, {}).uid == os.getuid()


def test_explicit_user_by_name_or_uid_wins_over_sudo() -> None:
    env = {"SUDO_UID": str(NOBODY.pw_uid)}
    assert resolve_user("root", env).uid == 0
    assert resolve_user("0", env).is_root
    assert resolve_user("nobody", {}).uid == NOBODY.pw_uid


def test_unknown_user_is_a_clear_error() -> None:
    with pytest.raises(NodeguardError, match="unknown user 'no-such-user-x'"):
        resolve_user("no-such-user-x", {})
