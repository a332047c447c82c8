"""The regression gate: latency A/B against a base git ref on this machine in one run; accuracy against the
committed parity baseline.

Latencies differ between machines (and between a machine's runs) in ways no code change explains, so they are
never compared with numbers from another machine. Instead, as asv's `continuous` does, the base ref is checked
out in a git worktree (build/<model>/regress-base/<sha>), built by its own code (seeded with this tree's build
the first time, so stages whose hashes are equal are not rebuilt), and both sides run their own bench stage
with the same sweep file, alternating in rounds (base, new, new, base, ...) so that drift hits both alike.
Each cell's timed runs are pooled per side; a cell is a regression only when the new median is slower than
the base's by more than `latency.factor` *and* a one-sided Mann-Whitney U test says the new side is slower
with at least `latency.confidence`, and every round on its own is past the factor too (a code change slows
every round; a disturbance of a shared machine slows one: "not reproduced"). Only the cells whose timed inputs
differ between the sides are timed (TimedInputs): a cell whose artifact bytes, timing code (the bench's shared
modules and its own runtime's), library versions, model config and sweep are the same is "same inputs: not
re-timed", and when every cell is, no round runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from stages.core.artifacts import SAMPLES_CSV, write_csv
from stages.core.errors import PipelineError
from stages.core.status import OK, has_kind
from stages.sam.spec import SPECS
from stages.tools.ab_stats import compare_samples, same_inputs_rows, status_of, with_inputs
from stages.tools.cells import LAT_KEY
from stages.tools.timed_inputs import fingerprints, pipeline_stages, timed_inputs

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Side:
    """One side of the A/B: the source tree whose code runs, and the root its build and reports live in."""

    name: str
    tree: Path
    root: Path

    def reports(self, model: str) -> Path:
        return self.root / "reports" / model


@dataclass
class BaseRef:
    sha: str
    how: str  # how it was chosen, for the report header


@dataclass
class AbResult:
    table: pd.DataFrame  # one row per cell: medians, ratio, p-value, confidence, verdict
    order: list[str] = field(default_factory=list)  # the sides in the order they were timed
    machine_class: str = ""


GIT_TIMEOUT_S = 300  # a worktree checkout of this repository takes seconds; a hung git (a lock, a prompt) fails


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"`git {' '.join(args)}` in {repo} did not finish within {GIT_TIMEOUT_S} s "
                            "(a stale .git/index.lock, or git waiting on a prompt?)") from None
    except FileNotFoundError:
        raise PipelineError("git is not installed: the A/B regression gate builds its base side from a git ref "
                            "(apt-get install git)") from None


def resolve_base(repo: Path, ref: str | None) -> BaseRef:
    """The base commit: `ref` when given; else the merge-base of HEAD and main; else HEAD~1 (HEAD is main)."""
    if git(repo, "rev-parse", "--git-dir").returncode:
        raise PipelineError(f"{repo} is not a git checkout: the A/B regression gate builds its base side from a "
                            f"git ref (clone the repository instead of copying it)")
    if ref:
        r = git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        if r.returncode:
            raise PipelineError(f"base ref {ref!r} is not a commit in {repo}: name a branch, tag or commit "
                                f"(BASE=main, BASE=HEAD~1, BASE=<sha>) or fix `base:` in configs/regress.yaml")
        return BaseRef(r.stdout.strip(), f"{ref}")
    head = git(repo, "rev-parse", "HEAD").stdout.strip()
    for main in ("main", "origin/main"):
        mb = git(repo, "merge-base", "HEAD", main)
        if mb.returncode == 0 and mb.stdout.strip() != head:
            return BaseRef(mb.stdout.strip(), f"the merge-base of HEAD and {main}")
    if uncommitted(repo):  # on main's tip with edits: the edits are what is new
        return BaseRef(head, "HEAD (the uncommitted changes are the new side)")
    parent = git(repo, "rev-parse", "--verify", "--quiet", "HEAD~1^{commit}")
    if parent.returncode:  # a shallow clone: the A/B still runs, as a check of the noise
        log.warning("regress: HEAD has no parent in this clone; the A/B compares HEAD with itself")
        return BaseRef(head, "HEAD itself (no earlier commit in this clone): a noise check")
    return BaseRef(parent.stdout.strip(), "HEAD~1 (HEAD is on main)")


def uncommitted(repo: Path) -> list[str]:
    """Tracked files changed and untracked files not ignored: the new side is the tree as it is."""
    out = git(repo, "status", "--porcelain", "--untracked-files=normal").stdout
    return [line[3:] for line in out.splitlines() if line.strip()]


def _link_or_copy(src: str, dst: str) -> None:
    # hard links are safe: every stage writes its outputs to a temp name and renames it over the old one
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def prepare_base(repo: Path, base: BaseRef, new: Side, model: str) -> Side:
    """A worktree of the base ref under build/<model>/regress-base/<sha>; on first use it is seeded with the new
    side's build and reports, so the base's own runner re-runs only the stages whose hashes differ."""
    dest = new.root / "build" / model / "regress-base" / base.sha[:12]
    ready = dest.with_name(dest.name + ".ready")  # written once the checkout is whole: an interrupted one is redone
    if not (dest / ".git").exists() or not ready.exists():
        ready.unlink(missing_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        git(repo, "worktree", "prune")
        r = git(repo, "worktree", "add", "--detach", "--force", str(dest), base.sha)
        if r.returncode:
            raise PipelineError(f"could not check out base {base.sha[:12]} into {dest}: {r.stderr.strip()}")
        ready.write_text(base.sha + "\n")
    side = Side("base", dest, dest)
    if not (dest / "build" / model / "pipeline.lock.json").exists():
        # logs are rewritten in place (not renamed over): the base side gets its own
        skip = shutil.ignore_patterns("regress-base", "regress", ".run.lock", "logs")
        for sub in (Path("build") / model, Path("reports") / model):
            if (new.root / sub).is_dir():
                shutil.rmtree(dest / sub, ignore_errors=True)
                shutil.copytree(new.root / sub, dest / sub, ignore=skip, copy_function=_link_or_copy)
        log.info("regress: base worktree %s seeded with this tree's build (stages with equal hashes are reused)", dest)
    if (new.root / "weights").is_dir() and not (dest / "weights").exists():
        (dest / "weights").symlink_to((new.root / "weights").resolve())
    return side


def run_side(side: Side, model: str, sweep: str | Path, stages: list[str], log_file: Path, force: bool = False) -> None:
    """`python -m stages run` with the side's own code (its tree first on sys.path, its tree as cwd)."""
    cmd = [sys.executable, "-m", "stages", "run", "--model", model, "--root", str(side.root), "--sweep", str(sweep),
           *stages, *(["--single", "--force"] if force else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(side.tree), os.environ.get("PYTHONPATH", "")])}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        rc = subprocess.run(cmd, cwd=side.tree, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc:
        tail = " | ".join(log_file.read_text(errors="replace").strip().splitlines()[-6:])
        raise PipelineError(f"{side.name} side ({side.tree}) failed running {' '.join(stages)} (exit {rc}); "
                            f"log {log_file}: {tail}")


def round_order(rounds: int) -> list[str]:
    """new base, base new, new base, ...: each side goes first equally often, so drift hits both alike."""
    return [s for r in range(rounds) for s in (("new", "base") if r % 2 == 0 else ("base", "new"))]


def _latency(reports: Path) -> pd.DataFrame:
    lat = pd.read_csv(reports / "latency.csv")
    return lat if "mode" in lat.columns else lat.assign(mode="default")  # from before sweep modes existed


def samples_of(lat: pd.DataFrame, reports: Path) -> pd.DataFrame:
    """One row per timed run of the ok cells of `lat` (reports/latency.csv): LAT_KEY columns and ms. Without
    latency_samples.csv (a base from before it existed), each ok cell's p50 stands for one sample."""
    ok = lat[has_kind(lat["status"], OK)]
    path = reports / SAMPLES_CSV
    if not path.exists():
        return ok[LAT_KEY].assign(ms=ok["p50_ms"], per_run=False)
    runs = pd.read_csv(path)
    keyed = ok[["cell", "points", "out_h", "out_w", *[k for k in LAT_KEY if k not in ("points", "out_h", "out_w")]]]
    return runs.merge(keyed, on=["cell", "points", "out_h", "out_w"])[[*LAT_KEY, "ms"]].assign(per_run=True)


def ab_latency(new: Side, base: Side, model: str, sweep: tuple[str, Path], gate, name: str) -> AbResult:
    """Build the base side's artifacts, then time both sides' bench stages in alternating rounds and test;
    only the cells whose timed inputs differ (none: no round runs). `model` is what `--model` gets on both
    sides (a name, or an absolute config path); `name` the config's name; `sweep`: how the new side names its
    sweep (as its own run did, so its cache stays valid) and that sweep's file, which the base side gets (both
    sides time the same sweep). Every round is a bench run of its own: the bench of the new side's full run,
    once used as its first round, gave x0.89-1.40 against the base round after it, above 1 in 23 of 27 cells,
    while round 2 gave x0.82-1.13 (vit_t, quick sweep, AMD 2 cores)."""
    from stages.core.artifacts import machine

    out = new.reports(name) / "regress"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    logs = new.root / "build" / name / "logs" / "regress.log"
    logs.unlink(missing_ok=True)
    base_stages = [s for s in _stage_names(base.tree) if s not in ("bench", "parity", "profile", "report")]
    log.info("regress: building the base side's artifacts (%s) in %s", ", ".join(base_stages), base.tree)
    new_sweep, base_sweep = sweep
    run_side(base, model, base_sweep, base_stages, logs)
    cells = _latency(new.reports(name))  # the new side's own run: every cell of the sweep
    cells = cells[has_kind(cells["status"], OK)]  # a cell skipped (a row per reason) is timed on neither side
    cells = cells.assign(**fingerprints(cells, *(timed_inputs(s.tree, s.root, model, name, Path(base_sweep))
                                                  for s in (base, new))))
    changed = cells["inputs_base"] != cells["inputs_new"]
    same = same_inputs_rows(cells[~changed])
    log.info("regress: %d cell(s) with the same timed inputs on both sides (not re-timed), %d to time A/B",
             len(same), changed.sum())
    if not changed.any():  # a docs- or tests-only change: nothing a timing reads differs
        write_csv(out / "ab.csv", same.to_dict("records"))
        return AbResult(same, [], str(machine()["machine_class"]))
    sweeps = (new_sweep, base_sweep)
    if len(same):  # time only what changed: a sweep of the changed cells' components, runtimes and variants
        sweeps = (restricted_sweep(Path(base_sweep), cells[changed], out / "sweep.yaml"),) * 2
    with _kept(new, name, out / "new-full-run", enabled=bool(len(same))):
        timed = _rounds(new, base, model, sweeps, gate, name, out, logs)
    table = pd.concat([with_inputs(timed, cells, cells[~changed]), same], ignore_index=True)
    write_csv(out / "ab.csv", table.to_dict("records"))
    return AbResult(table, round_order(gate.rounds), str(machine()["machine_class"]))


def _rounds(new: Side, base: Side, model: str, sweeps: tuple, gate, name: str, out: Path,
            logs: Path) -> pd.DataFrame:
    """gate.rounds bench runs per side, alternated; each cell's runs pooled per side and compared."""
    pooled: dict[str, list[pd.DataFrame]] = {"base": [], "new": []}
    last: dict[str, pd.DataFrame] = {}  # each side's latency.csv of its last round: the cells' statuses
    for i, which in enumerate(round_order(gate.rounds)):
        side, rnd = (base if which == "base" else new), i // 2 + 1
        log.info("regress: round %d/%d, %s side: bench", rnd, gate.rounds, which)
        # a base from before latency_samples.csv existed must not be read with a copied one
        (side.reports(name) / SAMPLES_CSV).unlink(missing_ok=True)
        run_side(side, model, sweeps[which == "base"], ["bench"], logs, force=True)
        reports = side.reports(name)
        shutil.copy2(reports / "latency.csv", out / f"{which}-{rnd}-latency.csv")
        if (reports / SAMPLES_CSV).exists():
            shutil.copy2(reports / SAMPLES_CSV, out / f"{which}-{rnd}-{SAMPLES_CSV}")
        lat = _latency(reports)
        pooled[which].append(samples_of(lat, reports).assign(round=rnd))
        last[which] = lat
    return compare_samples(pd.concat(pooled["base"]), pd.concat(pooled["new"]), status_of(last["base"]),
                           status_of(last["new"]), gate.factor, gate.confidence, last["new"])


def restricted_sweep(source: Path, cells: pd.DataFrame, dest: Path) -> str:
    """The sweep file with only the components, runtimes and variants of `cells` (their product: a superset,
    whose other cells are timed and not reported), without its same-process `paired` comparisons (the gate
    reads none)."""
    import yaml

    data = yaml.safe_load(source.read_text())
    wanted = set(cells["component"])
    data["components"] = [c for c in data.get("components", [*SPECS, "e2e"]) if c in wanted]
    data["runtimes"] = {rt: {**spec, "variants": sorted(set(cells.loc[cells["runtime"] == rt, "variant"]))}
                        for rt, spec in data["runtimes"].items() if rt in set(cells["runtime"])}
    data.pop("paired", None)
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(dest)


@contextlib.contextmanager
def _kept(side: Side, name: str, keep: Path, enabled: bool):
    """The side's bench outputs and lock file as its own run left them, put back after rounds of another
    sweep, so that its build stays up to date with its own sweep (the report stage then reruns nothing)."""
    files = [side.reports(name) / f for f in ("latency.csv", SAMPLES_CSV, "paired.csv")]
    files = [f for f in [*files, side.root / "build" / name / "pipeline.lock.json"] if enabled and f.exists()]
    for i, f in enumerate(files):
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, keep / f"{i}-{f.name}")
    try:
        yield
    finally:
        for i, f in enumerate(files):
            os.replace(keep / f"{i}-{f.name}", f)


def _stage_names(tree: Path) -> list[str]:
    return [name for name, spec in pipeline_stages(tree).items() if not spec.get("on_demand")]  # never part of a plain run
