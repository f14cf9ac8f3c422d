"""Which user the guarded command runs as.

`sudo nodeguard run -- agent` must not hand the agent root: a root process could leave its
cgroup (write its pid elsewhere) and load programs of its own. So by default the command
runs as the user who invoked sudo; ``--user`` chooses explicitly (``--user root`` keeps
root).
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass

from nodeguard.errors import NodeguardError


@dataclass(frozen=True, slots=True)
class RunAs:
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def apply(self) -> None:
        """Drop to this user (in the child, after joining the cgroup, before exec)."""
        if self.is_root:
            return
        os.setgroups(list(self.groups))
        os.setgid(self.gid)
        os.setuid(self.uid)


def _from_passwd(entry: pwd.struct_passwd) -> RunAs:
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return RunAs(entry.pw_uid, entry.pw_gid, groups, entry.pw_name)


def resolve_user(user: str | None, env: Mapping[str, str] | None = None) -> RunAs:
    """``user`` (name or uid) if given; else the sudo caller; else the current user."""
    env = os.environ if env is None else env
    if user is None:
        sudo_uid = env.get("SUDO_UID")
        user = sudo_uid if sudo_uid and sudo_uid.isdigit() else str(os.getuid())
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError as err:
        raise NodeguardError(
            f"unknown user {user!r} for --user", fix="give a user name or uid from /etc/passwd"
        ) from err
    if user.isdigit() and env.get("SUDO_GID", "").isdigit() and user == env.get("SUDO_UID"):
        run_as = _from_passwd(entry)
        return RunAs(run_as.uid, int(env["SUDO_GID"]), run_as.groups, run_as.name)
    return _from_passwd(entry)


def describe(run_as: RunAs) -> str:
    try:
        group = grp.getgrgid(run_as.gid).gr_name
    except KeyError:
        group = str(run_as.gid)
    return f"{run_as.name} (uid {run_as.uid}, gid {group})"
