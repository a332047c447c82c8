"""Bad SSH target specs and bad device answers, one row per input: what goes in, what must come out, and a
substring of the message (tests/test_ssh_faults.py runs them against the real sshd of tests/sshd.py).

In a spec, MARK stands for a file that must never be created (the test runs in a folder of its own); in a
device's answer, PY for the real Python there and MARK likewise."""

from __future__ import annotations

from dataclasses import dataclass, field

from stages.core.errors import ConfigError


@dataclass(frozen=True)
class BadSpec:
    id: str
    spec: str
    raises: type[Exception]
    message: str


BAD_SPECS = [
    BadSpec("user-is-an-option", "ssh://-oProxyCommand={touch,MARK}@h", ConfigError, "is not a user name"),
    BadSpec("host-is-an-option", "ssh://-oProxyCommand={touch,MARK}", ConfigError, "is not a host name"),
    BadSpec("host-is-option-F", "ssh://pi@-Fboard", ConfigError, "is not a host name"),
    BadSpec("option-with-a-path", "ssh://-oProxyCommand=touch${IFS}/tmp/MARK@h", ConfigError,
            "is not an SSH target"),
    BadSpec("user-with-a-command", "ssh://pi;touch MARK@board", ConfigError, "is not a user name"),
    BadSpec("host-with-a-dollar", "ssh://pi@bo$(touch MARK)ard", ConfigError, "is not a host name"),
    BadSpec("port-0", "ssh://pi@board:0", ConfigError, "the port must be a number from 1 to 65535"),
    BadSpec("port-70000", "ssh://pi@board:70000", ConfigError, "the port must be a number from 1 to 65535"),
    BadSpec("port-abc", "ssh://pi@board:abc", ConfigError, "the port must be a number from 1 to 65535"),
    BadSpec("unknown-key", "ssh://pi@board?timeuot=5", ConfigError, "unknown option timeuot"),
    BadSpec("empty-host", "ssh://pi@:2222", ConfigError, "is not an SSH target"),
    BadSpec("bad-ipv6", "ssh://pi@[::1", ConfigError, "is not an SSH target"),
    BadSpec("timeout-0", "ssh://pi@board?timeout=0", ConfigError,
            "timeout must be a number of seconds above 0"),
    BadSpec("timeout-inf", "ssh://pi@board?timeout=inf", ConfigError, "above 0 and at most 86400, got inf"),
    BadSpec("timeout-word", "ssh://pi@board?timeout=soon", ConfigError,
            "timeout must be a number of seconds"),
    BadSpec("python-unclosed-quote", "ssh://pi@board?python=python3%20'x", ConfigError,
            "cannot be split into words"),
    BadSpec("dir-tilde-command", "ssh://pi@board?dir=~$(touch%20MARK)/x", ConfigError, "is not a folder"),
]


# A stand-in `python` there: on a cell's call (a request with feeds; the probe has none) it does `answer`
FAULT_ON_A_CELL = ('if grep -q feeds "$2"; then n=${{2#request-}}; n=${{n%.json}}; {answer}; fi\n'
                   'exec PY "$@"\n')


@dataclass(frozen=True)
class DeviceFault:
    """A device that answers wrongly: through its login (`login`: a port of tests/sshd.py), its Python
    (`answer`, a shell command run in the run folder instead of the runner, or `python`, the spec's python=).
    `bench`: the statuses of a bench's encoder and decoder rows on it; `parity`: target_parity's status there
    (None: not run there); `message`: in every failed status."""

    id: str
    bench: tuple[str, str]
    message: str
    answer: str = ""
    python: str = ""
    login: str = ""
    query: dict[str, str] = field(default_factory=dict)
    parity: str | None = None


DEVICE_FAULTS = [
    DeviceFault("banner-login", ("ok", "ok"), "", login="banner", parity="ok"),
    DeviceFault("garbage", ("failed", "failed"), "not the protocol's JSON object",
                answer="printf 'Segmentation fault\\n\\001\\002garbage' > result-$n.json; exit 0"),
    DeviceFault("half-json", ("failed", "failed"), "not the protocol's JSON object (Unterminated string",
                answer="printf '{\"mnn_version\": \"3.6.1\", \"tim' > result-$n.json; exit 0"),
    DeviceFault("json-list", ("failed", "failed"), "not the protocol's JSON object (a JSON list)",
                answer="echo '[1, 2]' > result-$n.json; exit 0"),
    DeviceFault("no-timings", ("failed", "failed"), "as the timings of 1 workloads",
                answer="echo '{\"mnn_version\": \"3.6.1\"}' > result-$n.json; exit 0"),
    DeviceFault("nothing", ("failed", "failed"), "the device wrote no", answer="exit 0"),
    DeviceFault("exit-by-signal", ("failed", "failed"), "killed by signal SIGKILL", answer="kill -KILL $$"),
    DeviceFault("garbage-outputs", ("ok", "ok"), "are not an .npz",
                answer="PY \"$@\"; s=$?; head -c 100 \"$2\" > out-$n.npz; exit $s", parity="failed"),
    # the first copy of a model stops (SIGSTOP): that cell fails at its timeout, the next one runs
    DeviceFault("stalled-copy", ("failed", "ok"), "timed out after", login="stall", query={"timeout": "20"}),
    # quoted, so no command: a program of that name is not found there (and MARK is never made)
    DeviceFault("python-semicolon", ("failed", "failed"), "was not found there", python="PY;touch MARK"),
    DeviceFault("python-substitution", ("failed", "failed"), "was not found there",
                python="$(touch MARK) PY"),
]
