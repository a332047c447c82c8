"""A real OpenSSH server on 127.0.0.1 for the SSH-target tests: Debian's sshd on free unprivileged ports, with
a throwaway host key, user key, authorized_keys, known_hosts and ssh_config in a temp folder; stopped
afterwards. Nothing listens anywhere but 127.0.0.1. Two of its ports play devices whose login misbehaves
(ForceCommand): one prints a banner and a MOTD, one stops (SIGSTOP) its first copy into files/."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from stages.core import debian


@dataclass
class Sshd:
    folder: Path
    port: int
    proc: subprocess.Popen
    user: str = getpass.getuser()
    ports: list[int] = field(default_factory=list)  # more plain ports: targets of other names, same server
    banner_port: int = 0  # a login that prints a banner and a MOTD around what every command prints
    stall_port: int = 0  # a login whose first copy into files/ stops itself (SIGSTOP) while `stall` exists

    @property
    def config(self) -> Path:
        return self.folder / "ssh_config"

    def spec(self, host: str = "127.0.0.1", python: str = sys.executable, dir: str = "", keep: bool = False,
             port: int | None = None, **query: str) -> str:
        """An ssh:// target on this server (or on `port`, where nothing listens); `query`: more keys."""
        q = [f"python={quote(python)}", f"config={quote(str(self.config))}"]
        q += [f"dir={quote(dir)}"] if dir else []
        q += ["keep=1"] if keep else []
        q += [f"{k}={quote(str(v))}" for k, v in query.items()]
        return f"ssh://{self.user}@{host}:{port or self.port}?{'&'.join(q)}"

    def script(self, name: str, body: str) -> str:
        """An executable shell script in the server's folder (a stand-in `python` that misbehaves on
        purpose)."""
        path = self.folder / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ForceCommand stand-ins for a device's login: they run the command the client sent, as sshd would
BANNER_SHELL = """echo "Welcome to the board (a login banner)"
echo "Last login: Mon Dec  1 10:00:00 2026 from 10.0.0.2"
echo "a MOTD line on stderr" >&2
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"""
# stopped for good as far as a test goes: released after 90 s so that code with no timeout fails, not hangs
STALL_SHELL = """case "$SSH_ORIGINAL_COMMAND" in *"cat > "*".part-"*)
  if rm "{folder}/stall" 2>/dev/null; then
    echo $$ >> "{folder}/stalled.pids"; (sleep 90; kill -CONT $$) </dev/null >/dev/null 2>&1 &
    kill -STOP $$
  fi;;
esac
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"""
EXTRA_PORTS = 12


def start(folder: Path) -> Sshd:
    exe = debian.ensure({"sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client"},
                        "the SSH target tests")
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("host_key", "user_key"):
        subprocess.run([exe["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)],
                       check=True)
    (folder / "authorized_keys").write_text((folder / "user_key.pub").read_text())
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder
    for name, body in (("banner-shell", BANNER_SHELL), ("stall-shell", STALL_SHELL.format(folder=folder))):
        (folder / name).write_text("#!/bin/sh\n" + body)
        (folder / name).chmod(0o755)
    for _ in range(5):  # a port taken between choosing and binding: other ones
        port, *more = ports = sorted({free_port() for _ in range(EXTRA_PORTS + 3)})
        *more, banner, stall = more
        (folder / "sshd_config").write_text("\n".join([
            "ListenAddress 127.0.0.1", *(f"Port {p}" for p in ports), f"HostKey {folder / 'host_key'}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}", "UsePAM no",
            "StrictModes no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", "MaxSessions 50", "MaxStartups 50",
            f"Match LocalPort {banner}", f"  ForceCommand {folder / 'banner-shell'}",
            f"Match LocalPort {stall}", f"  ForceCommand {folder / 'stall-shell'}", ""]))
        host_key = (folder / "host_key.pub").read_text().strip()
        (folder / "known_hosts").write_text("".join(f"[{h}]:{p} {host_key}\n" for p in ports
                                                    for h in ("127.0.0.1", "localhost")))
        (folder / "ssh_config").write_text(
            f"Host *\n  IdentityFile {folder / 'user_key'}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {folder / 'known_hosts'}\n  StrictHostKeyChecking yes\n")
        proc = subprocess.Popen([exe["sshd"], "-D", "-e", "-f", str(folder / "sshd_config")],
                                stdout=open(folder / "sshd.log", "w"), stderr=subprocess.STDOUT)
        for _ in range(100):
            if proc.poll() is not None:
                break
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return Sshd(folder, port, proc, ports=more, banner_port=banner, stall_port=stall)
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise RuntimeError(f"sshd did not start: {(folder / 'sshd.log').read_text()[-1000:]}")


def stop(server: Sshd) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
