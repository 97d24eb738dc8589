"""``taskfleet install-service server|taskserver|agent``: a systemd unit for a role.

The unit starts the role from its configuration file alone (``ROLE --config FILE``), as
``Type=notify``: the role says READY once it listens (the NS, a TS) or is connected (an agent),
STOPPING when it stops, and pings the watchdog from its event loop (:mod:`runtime.sdnotify`).

Choices the unit makes, and why (docs/operations.md tells the operator the same):

- ``Restart=on-failure`` with ``RestartPreventExitStatus=2 5``: exit 2 (a configuration the
  role cannot use) and 5 (refused for good by the NS) need a person, restarting only fills the
  journal. Exit 4 (could not start) is restarted: its commonest cause under systemd is the
  previous process's port not yet free, or a disk that fills and frees; a cause that stays
  (a damaged database) ends in the ``failed`` state after ``StartLimitBurst`` tries.
- The NS and TS run as the ``taskfleet`` user with the file system read-only but for their data
  folder (``ProtectSystem=strict``, ``ReadWritePaths=``), no privilege gain, private /tmp, no
  /home, only IP and Unix sockets. ``MemoryDenyWriteExecute`` is left out: ``cryptography`` and
  ``cffi`` may need writable-and-executable memory for callbacks (libffi closures), and a
  refusal would only show the day such a code path runs.
- The agent runs as root without the file-system protections: its tasks install software,
  manage services, restart the machine and run administrators' scripts, which a sandbox would
  break. ``KillMode=mixed``: SIGTERM goes to the agent alone, which stops its scripts itself.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import sys
from typing import Any

from admin.common import EXIT_OK, EXIT_START, EXIT_USAGE
from admin.config import CONFIG_DIR_ENV, DEFAULT_CONFIG_DIR, ConfigError, load

ROLES = ("server", "taskserver", "agent")
DEFAULT_UNIT_DIR = "/etc/systemd/system"
WATCHDOG_SEC = 30
SERVICE_USER = "taskfleet"
DESCRIPTIONS = {
    "server": "taskfleet Notification Server",
    "taskserver": "taskfleet Task Server",
    "agent": "taskfleet agent",
}

HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "UMask=0077",
)
"""For the NS and TS (which only listen, connect and write their data folder)."""


def unit_name(role: str) -> str:
    return f"taskfleet-{role}.service"


def unit_text(
    role: str, config: str, data: str, command: list[str], listen_port: int | None
) -> str:
    """The unit file for ``role`` started as ``command ROLE --config config``."""
    exec_start = " ".join(_word(w) for w in [*command, role, "--config", config])
    lines = [
        f"# {unit_name(role)}: written by `taskfleet install-service {role}`",
        "# (see docs/operations.md); edit the configuration file, not this unit.",
        "[Unit]",
        f"Description={DESCRIPTIONS[role]}",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=600",
        "StartLimitBurst=10",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start}",
        "Restart=on-failure",
        "RestartSec=5",
        "RestartPreventExitStatus=2 5",
        f"WatchdogSec={WATCHDOG_SEC}",
        "TimeoutStopSec=60",
    ]
    if role == "agent":
        lines += [
            "# root, no sandbox: the agent's tasks install software, manage services and run",
            "# administrators' scripts. SIGTERM to the agent alone: it stops its scripts itself.",
            "KillMode=mixed",
            "LimitNOFILE=65536",
        ]
    else:
        lines += [
            f"User={SERVICE_USER}",
            f"Group={SERVICE_USER}",
            "# one descriptor per connected agent (and TS): far above the usual 1024",
            "LimitNOFILE=1048576",
            *HARDENING,
            f"ReadWritePaths={_word(data)}",
            *_state_directory(data),
            *_capabilities(listen_port),
        ]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def _state_directory(data: str) -> list[str]:
    """A data folder under /var/lib is made by systemd, owned by the service user, mode 0700."""
    relative = os.path.relpath(data, "/var/lib")
    if relative.startswith("..") or relative == ".":
        return []
    return [f"StateDirectory={_word(relative)}", "StateDirectoryMode=0700"]


def _capabilities(port: int | None) -> list[str]:
    """No capability at all, unless the role listens below 1024."""
    if port is not None and 0 < port < 1024:
        return [
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        ]
    return ["CapabilityBoundingSet="]


def _word(text: str) -> str:
    """One word of a unit setting: ``%`` escaped (systemd expands specifiers), quoted if needed."""
    text = text.replace("%", "%%")
    if any(c.isspace() for c in text) or '"' in text or "\\" in text:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def taskfleet_command() -> list[str]:
    """How systemd should start taskfleet: this command's absolute path when it was started
    as ``taskfleet``, else the ``taskfleet`` on PATH, else this Python with ``-m admin``."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "taskfleet" and os.path.isfile(argv0):
        return [os.path.abspath(argv0)]
    found = shutil.which("taskfleet")
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "admin"]


def cmd_install_service(args: argparse.Namespace, parsers: dict[str, Any]) -> int:
    role = args.role
    config = args.config or os.path.join(
        os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR, f"{role}.toml"
    )
    config = os.path.abspath(config)
    if not os.path.isfile(config):
        return _usage(
            f"no configuration file {config}: write one (docs/operations.md has an example for"
            f" each role) or give --config FILE"
        )
    try:
        settings = load(config, parsers[role]._actions)
    except ConfigError as exc:
        return _usage(str(exc))
    data = settings.get("data")
    if not data:
        return _usage(
            f"{config} has no data key: the unit lets the {role} write only its data folder"
            f' (ReadWritePaths=); add data = "/var/lib/taskfleet/{role}"'
        )
    command = taskfleet_command()
    if role != "agent":
        for problem in sandbox_problems(command[0], config, os.path.abspath(data)):
            print(f"taskfleet: warning: {problem}", file=sys.stderr)
    text = unit_text(role, config, os.path.abspath(data), command, _port(settings.get("listen")))
    if args.print:
        print(text, end="")
        return EXIT_OK
    path = os.path.join(args.unit_dir, unit_name(role))
    try:
        _write(path, text)
    except OSError as exc:
        print(
            f"taskfleet: cannot write {path}: {exc.strerror or exc}; run as root, or give"
            " --unit-dir DIR (or --print)",
            file=sys.stderr,
        )
        return EXIT_START
    name = unit_name(role).removesuffix(".service")
    print(f"wrote {path}\nnow run:\n  systemctl daemon-reload && systemctl enable --now {name}")
    return EXIT_OK


HIDDEN = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")
"""Folders the NS's and TS's units hide (``ProtectHome=yes``, ``PrivateTmp=yes``)."""


def sandbox_problems(program: str, config: str, data: str) -> list[str]:
    """What would keep the sandboxed unit of the NS or a TS from starting, found now rather than
    at ``systemctl start`` (status 203/EXEC): a program, configuration or data folder its
    sandbox hides, or no ``taskfleet`` user to run it as."""
    out = []
    for what, path in (("the taskfleet program", program), ("the configuration", config)):
        if path.startswith(HIDDEN):
            out.append(
                f"{what} is {path}, which the unit's ProtectHome=/PrivateTmp= hide from the"
                " service: install taskfleet (and its configuration) outside /home, /root and /tmp"
            )
    if data.startswith(HIDDEN):
        out.append(f"the data folder {data} is hidden from the service: use /var/lib/taskfleet/…")
    try:
        pwd.getpwnam("taskfleet")
    except KeyError:
        out.append(
            "there is no user taskfleet to run the service as: create it first (useradd --system"
            " --home-dir /var/lib/taskfleet --shell /usr/sbin/nologin taskfleet), and give it the"
            " data folder"
        )
    return out


def _port(listen: Any) -> int | None:
    if not isinstance(listen, str):
        return None
    from runtime.link import split_hostport

    try:
        return split_hostport(listen, 0)[1]
    except ValueError:
        return None


def _write(path: str, text: str) -> None:
    """Write the unit whole or not at all (a half-written unit is worse than none)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _usage(message: str) -> int:
    print(f"taskfleet: {message}", file=sys.stderr)
    return EXIT_USAGE


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parsers: dict[str, Any]
) -> None:
    """Register ``install-service``; ``parsers``: the roles' parsers, to check a file's keys."""
    p = sub.add_parser(
        "install-service",
        help="write a systemd unit for a role (server, taskserver, agent) started from its"
        " configuration file",
    )
    p.add_argument("role", choices=ROLES, help="the role the unit runs")
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"the role's configuration file (default: {DEFAULT_CONFIG_DIR}/ROLE.toml); it"
        " must name the data folder",
    )
    p.add_argument("--print", action="store_true", help="print the unit instead of writing it")
    p.add_argument(
        "--unit-dir",
        metavar="DIR",
        default=DEFAULT_UNIT_DIR,
        help=f"where to write the unit (default {DEFAULT_UNIT_DIR}; for packagers and tests)",
    )
    p.set_defaults(func=lambda args: cmd_install_service(args, parsers))
