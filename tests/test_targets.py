"""The emulated ARM64 target: MNN's real aarch64 kernels under QEMU, on the tiny model.

These run the emulation for real (qemu-user-static and an arm64 Debian root with MNN's aarch64 wheel, built by
stages/runtimes/arm_env.py); they are skipped, with the reason, only where that cannot be installed (not root, no apt).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT_DIR, killing_worker, statuses, write_config
from stages.config import load_model_config
from stages.core.errors import ConfigError, PipelineError
from stages.engine.graph import load_pipeline
from stages.engine.run import _select, run_pipeline
from stages.ondevice.mnn_runner import load_cases, save_cases
from stages.runtimes import arm_env
from stages.runtimes.targets import HOST, Target, feature_flags, parse_target
from stages.sam.spec import decoder_feeds


def _masks(target: Target, model: Path, feeds: Path, tmp: Path, precision: str) -> tuple[np.ndarray, dict]:
    out = tmp / f"{target.name.replace(':', '-')}-{precision}.npz"
    res = target.run({"model": str(model), "feeds": str(feeds), "out": str(out),
                      "settings": {"threads": 1, "precision": precision}}, tmp / f"{out.stem}.log", 900)
    assert res.ok, res.why
    return load_cases(out)["case"]["low_res_masks"], res.result


def test_precision_low_computes_fp16_on_armv82_and_fp32_on_cortex_a53(fp32_build, arm, tmp_path):
    """The tiny decoder (an emulated encoder run takes minutes): prompt in, low-res mask logits out."""
    model = fp32_build[0] / "build" / "tiny_fp32" / "mnn" / "decoder.fp32.mnn"
    emb = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    feeds = save_cases(tmp_path / "feeds.npz", {"case": decoder_feeds(
        emb, np.array([[40.0, 30.0], [80.0, 60.0]], np.float32), np.array([1.0, 0.0], np.float32), (90, 120))})
    host, _ = _masks(HOST, model, feeds, tmp_path, "normal")
    normal, about = _masks(parse_target("arm64"), model, feeds, tmp_path, "normal")
    low, _ = _masks(parse_target("arm64"), model, feeds, tmp_path, "low")
    assert about["machine"] == "aarch64" and "fp16:1" in about["cpu_features"].split()
    assert about["mnn_version"] == arm.mnn_version()

    def rel(a):
        return float(np.linalg.norm(a - host) / np.linalg.norm(host))

    assert rel(normal) < 1e-4  # ARM fp32 kernels: the host's result up to summation order
    assert not np.array_equal(low, normal) and rel(low) > 10 * rel(normal)
    assert np.array_equal(low.astype(np.float16).astype(np.float32), low)  # every value an fp16 number
    # ARMv8.0 (no fp16 arithmetic): precision low is exactly precision normal
    a53_normal, a53 = _masks(parse_target("arm64:cortex-a53"), model, feeds, tmp_path, "normal")
    a53_low, _ = _masks(parse_target("arm64:cortex-a53"), model, feeds, tmp_path, "low")
    assert "fp16:0" in a53["cpu_features"].split() and np.array_equal(a53_low, a53_normal)
    assert feature_flags(about["cpu_features"]) >= {"asimdhp", "asimddp", "i8mm"}


TARGETS = {"arm64": {"target": "arm64", "cells": ["mnn-fp32@normal", "mnn-fp32@low", "mnn-fp32@Low_BF16"],
                     "images": ["chelsea"], "prompts": ["one_point", "box"], "threads": 1}}
# fp16 arithmetic on the tiny model: a report-only tier, so the stage's verdict rests on the fp32 rows
FP16_TIER = {"cosine": 0.99, "rel_l2": 0.1, "mask_iou": 0.5, "logit_rtol": 0.05, "logits_within_tol": 0.5,
             "iou_pred_abs": 0.05, "e2e_mask_iou": 0.5, "gate": False}


def _arm_config(cfg_path: Path) -> Path:
    return write_config(cfg_path, base=cfg_path, targets=TARGETS, **{"parity.thresholds.fp32@low": FP16_TIER})


def test_target_parity_on_arm_and_host_a_crash_fails_only_its_cell(fp32_only, arm):
    """One run of the stage (an emulated encoder at precision low takes minutes): mnn-fp32@normal's ARM runner
    is killed mid-run, mnn-fp32@low computes fp16 there, Low_BF16 cannot be checked; the host runs all three."""
    root, cfg_path = fp32_only
    cfg = load_model_config(str(_arm_config(cfg_path)))
    # the first emulated process is the target's probe; the second runs mnn-fp32@normal's encoder
    with killing_worker(signal.SIGKILL, match="qemu-aarch64", skip=1, after_s=5) as hit:
        got = statuses(run_pipeline(cfg, root, targets=["target_parity", "report"]))
    assert hit and got["target_parity"] == "failed" and got["report"] == "ran", got
    df = pd.read_csv(root / "reports" / "tiny_fp32" / "target_parity.csv")
    arm_rows, host_rows = df[df["target"] == "arm64"], df[df["target"] == "host"]
    failed = df[df["status"].str.startswith("failed")]
    assert set(failed["cell"]) == {"mnn-fp32@normal"} and set(failed["target"]) == {"arm64"}
    why = failed["status"].iloc[0]
    assert "MNN runner on arm64 killed by signal SIGKILL" in why and "[last output: mnn_runner: aarch64" in why
    assert set(arm_rows["cpu_features"]) == {"i8sdot:1 fp16:1 i8mm:1 sve2:1 sme2:0"}
    assert (arm_rows["target_machine"] == "aarch64").all() and (arm_rows["emulated"] == True).all()  # noqa: E712
    ok = arm_rows[arm_rows["status"] == "ok"].set_index(["cell", "component"])
    host = host_rows.set_index(["cell", "component"])
    assert (host.loc[["mnn-fp32@normal", "mnn-fp32@low"], "status"] == "ok").all()
    assert host.loc["mnn-fp32@Low_BF16", "status"].str.contains("would compute fp32").all()  # x86: no SME2 either
    low = ok.loc[("mnn-fp32@low", "encoder")]  # the cell after the crash ran
    assert low["fp16_compute"] == "yes" and low["tier"] == "fp32@low"
    assert low["cosine"] < host.loc[("mnn-fp32@normal", "encoder"), "cosine"]
    assert ok["mask_iou_fp32_upsample"].dropna().between(0, 1).all() and ok["mask_iou_fp32_upsample"].notna().any()
    bf16 = arm_rows[arm_rows["cell"] == "mnn-fp32@Low_BF16"]
    assert bf16["status"].str.contains("SME2").all() and bf16["pass"].isna().all()  # said, never reported as checked
    assert host.loc[("mnn-fp32@low", "encoder"), "fp16_compute"] == "no"  # x86: low computes fp32
    assert host.loc[("mnn-fp32@low", "encoder"), "cosine"] == host.loc[("mnn-fp32@normal", "encoder"), "cosine"]
    summary = (root / "reports" / "tiny_fp32" / "summary.md").read_text()
    assert "## Host vs ARM" in summary and "Not checked: mnn-fp32@Low_BF16 on arm64" in summary
    # on demand: a plain run does not run it, and the report that read its CSV stays up to date
    again = statuses(run_pipeline(cfg, root))
    assert "target_parity" not in again and again["report"] == "cached", again


def test_target_mnn_version_must_equal_the_hosts(tmp_path, arm):
    folder = tmp_path / "arm64"
    folder.mkdir()
    (folder / "ready.json").write_text(json.dumps({"mnn": "3.5.0"}))
    with pytest.raises(PipelineError, match=r"ARM64 target is 3\.5\.0, on the host 3\.6\.1"):
        arm_env.ensure(folder)


def test_target_config_errors_name_the_key(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", targets={"arm64": {"target": "arm65", "cells": ["mnn-fp32@low"]}})
    with pytest.raises(ConfigError, match=r"targets.*'arm65' is not a target; expected one of: host, arm64"):
        load_model_config(str(bad))
    bad = write_config(tmp_path / "bad.yaml", targets={"arm64": {"cells": ["fp32@low"]}})
    with pytest.raises(ConfigError, match=r"'fp32@low' is not an MNN parity cell; expected mnn-<variant>@<precision>"):
        load_model_config(str(bad))


def test_target_parity_is_on_demand(tmp_path):
    cfg = load_model_config(str(write_config(tmp_path / "t.yaml")))
    stages = load_pipeline(ROOT_DIR / "pipeline.yaml", cfg, tmp_path)
    assert "target_parity" not in [s.name for s in _select(stages, None, False, Path("pipeline.yaml"))]
    named = [s.name for s in _select(stages, ["report"], False, Path("pipeline.yaml"))]
    assert "target_parity" not in named and "parity" in named
    assert "target_parity" in [s.name for s in _select(stages, ["target_parity"], False, Path("pipeline.yaml"))]
