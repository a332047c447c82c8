"""A real OpenSSH server on 127.0.0.1 for the SSH-target tests: Debian's sshd on a free unprivileged port, with a
throwaway host key, user key, authorized_keys, known_hosts and ssh_config in a temp folder; stopped afterwards.
Nothing listens anywhere but 127.0.0.1."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from stages.core import debian


@dataclass
class Sshd:
    folder: Path
    port: int
    proc: subprocess.Popen
    user: str = getpass.getuser()

    @property
    def config(self) -> Path:
        return self.folder / "ssh_config"

    def spec(self, host: str = "127.0.0.1", python: str = sys.executable, dir: str = "", keep: bool = False,
             port: int | None = None) -> str:
        """An ssh:// target on this server (or on `port`, where nothing listens)."""
        q = [f"python={quote(python)}", f"config={quote(str(self.config))}"]
        q += [f"dir={quote(dir)}"] if dir else []
        q += ["keep=1"] if keep else []
        return f"ssh://{self.user}@{host}:{port or self.port}?{'&'.join(q)}"

    def script(self, name: str, body: str) -> str:
        """An executable shell script in the server's folder (a stand-in `python` that misbehaves on purpose)."""
        path = self.folder / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: Path) -> Sshd:
    exe = debian.ensure({"sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client"},
                        "the SSH target tests")
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("host_key", "user_key"):
        subprocess.run([exe["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    (folder / "authorized_keys").write_text((folder / "user_key.pub").read_text())
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder
    for _ in range(5):  # a port taken between choosing and binding: another one
        port = free_port()
        (folder / "sshd_config").write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {folder / 'host_key'}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}", "UsePAM no",
            "StrictModes no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", "MaxSessions 50", "MaxStartups 50", ""]))
        host_key = (folder / "host_key.pub").read_text().strip()
        (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n[localhost]:{port} {host_key}\n")
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
                    return Sshd(folder, port, proc)
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
