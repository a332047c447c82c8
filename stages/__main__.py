"""Command line: `python -m stages run --model vit_t`, `status`, `stages`.

Errors a user can fix print as one paragraph and exit 2; a run with failed stages exits 1.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from stages.core.errors import PipelineError
from stages.ondevice.mnn_settings import UPSAMPLE

ROOT = Path(__file__).resolve().parent.parent


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")


def threads_arg(text: str) -> int:
    """--threads: a whole number of threads, 1 to 256."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of threads (expected 1 to 256)") from None
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"{n} threads: expected 1 to 256")
    return n


def minutes_arg(text: str) -> float:
    """--idle-minutes: a finite number of minutes > 0."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 < v < 1e6:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of minutes > 0")
    return v


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vit_t", help="name under configs/models/ or a path to a model YAML")
    p.add_argument("--root", type=Path, default=ROOT, help="folder for build/ and reports/ (and relative checkpoint paths)")
    p.add_argument("--pipeline", type=Path, default=None, help="pipeline file (default: the repository's pipeline.yaml)")
    p.add_argument("--require-checkpoint", action="store_true", help="fail when the checkpoint is missing")
    p.add_argument("--sweep", default=None, help="latency sweep under configs/sweeps/ (default: the model's bench.sweep)")
    p.add_argument("--target", action="append", default=None, metavar="TARGET",
                   help="where the bench times cells, instead of the model's bench.targets: host or "
                        "ssh://[user@]host[:port][?python=...] (repeat it, or separate with spaces, for several)")


def _load(args):
    from stages.config import load_model_config

    cfg = load_model_config(args.model)
    if args.require_checkpoint:
        cfg.require_checkpoint = True
    if args.sweep:
        from stages.config import load_sweep

        load_sweep(args.sweep)  # a bad name fails here, naming the known sweeps
        cfg.bench.sweep = args.sweep
    if getattr(args, "target", None):
        from stages.config import BenchConfig, error_text

        targets = [t for arg in args.target for t in arg.replace(",", " ").split()]
        try:
            cfg.bench = BenchConfig(cfg.bench.sweep, cfg.bench.image, targets)
        except ValueError as e:
            raise PipelineError(f"--target: {error_text(e, BenchConfig)}") from None
    return cfg


def cmd_run(args) -> int:
    from stages.engine.run import run_pipeline, summary_table

    cfg = _load(args)
    results = run_pipeline(cfg, args.root.resolve(), args.pipeline, targets=args.stages, single=args.single,
                           force=args.force)
    print("\n" + summary_table(results))
    failed = [r for r in results if r.status in ("failed", "skipped")]
    if failed:
        print(f"\n{len(failed)} stage(s) did not finish: {', '.join(r.stage for r in failed)}. "
              f"Finished artifacts and report rows are kept; see the logs above and reports/{cfg.name}/.")
        return 1
    return 0


def cmd_status(args) -> int:
    from stages.engine.status import status_lines

    for line in status_lines(_load(args), args.root.resolve(), args.pipeline):
        print(line)
    return 0


def cmd_regress(args) -> int:
    from stages.tools import gate

    return gate.regress(args, _load)


def cmd_baseline(args) -> int:
    from stages.tools import gate

    return gate.baseline(args, _load)


def cmd_compare(args) -> int:
    from stages.tools import gate

    return gate.compare(args)


def cmd_segment(args) -> int:
    """MNN only: no torch, onnx or onnxruntime is imported on this path."""
    from stages.core.names import mnn_file
    from stages.ondevice.mnn_settings import DEFAULT_UPSAMPLE
    from stages.tools.segment import parse_floats, parse_points, recommended_models, segment_file

    mnn = args.root.resolve() / "build" / args.model / "mnn"
    encoder, decoder = mnn / mnn_file("encoder", args.variant), mnn / mnn_file("decoder", args.variant)
    options: dict[str, dict] = {}
    upsample = DEFAULT_UPSAMPLE
    if args.variant in ("recommended", "smallest"):
        rec = recommended_models(args.root.resolve(), args.model, "smallest" if args.variant == "smallest" else "fastest")
        if rec is None:
            logging.warning("no MNN rows in reports/%s/recommended.csv (run `make all`): using the fp32 variant",
                            args.model)
            encoder, decoder = mnn / mnn_file("encoder", "fp32"), mnn / mnn_file("decoder", "fp32")
        else:
            encoder, decoder = rec["encoder"]["path"], rec["decoder"]["path"]
            upsample = rec["decoder"]["upsample"]
            options = {c: {"precision": r["precision"], **r["options"]} for c, r in rec.items()}
            logging.info("recommended MNN models (%s passing parity): %s", "smallest" if args.variant == "smallest" else "fastest",
                         "; ".join(f"{r['path'].name} {options[c]}" for c, r in rec.items()))
    if args.precision:
        options = {c: {**options.get(c, {}), "precision": args.precision} for c in ("encoder", "decoder")}
    encoder, decoder = args.encoder or encoder, args.decoder or decoder
    points = parse_points(args.points)
    labels = parse_floats(args.labels, "labels")
    box = parse_floats(args.box, "box")
    res = segment_file(args.image, args.out, encoder, decoder, points, labels, box, args.threads, options=options,
                       upsample=args.upsample or upsample)
    t = res["timings_ms"]
    print(f"mask     {res['mask']}  ({100 * res['mask_fraction']:.1f}% of the image, predicted IoU "
          f"{res['iou_prediction']:.3f})\noverlay  {res['overlay']}")
    print("time ms  " + "  ".join(f"{k} {v:.1f}" for k, v in t.items()))
    return 0


def cmd_arm_env(args) -> int:
    from stages.runtimes import arm_env
    from stages.runtimes.targets import parse_target

    env = arm_env.ensure()
    for cpu in ("max", "cortex-a53"):
        about = parse_target(f"arm64:{cpu}").probe(env.folder / f"probe-{cpu}.log")
        print(f"arm64 -cpu {cpu:<10} {about['machine']}, MNN {about['mnn_version']}, Python {about['python']}, "
              f"CPU features (MNN): {about['cpu_features']}")
    print(f"ready: {env.folder}")
    return 0


def cmd_demo(args) -> int:
    """MNN only, as segment: the server process imports no torch, onnx or onnxruntime."""
    from stages.tools.demo.server import Demo, serve

    try:
        serve(Demo(args.root.resolve(), args.model, threads=args.threads), args.port, args.idle_minutes)
    except KeyboardInterrupt:  # uvicorn stops on Ctrl-C / SIGTERM, then re-raises the signal it caught
        print("demo stopped", file=sys.stderr)
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the pipeline (stages whose inputs, params or code changed)")
    _model_args(p)
    p.add_argument("stages", nargs="*", help="stages to run, with what they need (default: all)")
    p.add_argument("--single", action="store_true", help="run only the named stages, not their upstream")
    p.add_argument("--force", action="store_true", help="re-run even when up to date")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("status", help="which stages are up to date and why the others would run")
    _model_args(p)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("regress", help="every stage with the quick sweep; accuracy vs reports/baselines/MODEL, "
                                       "latency A/B against a base git ref on this machine")
    _model_args(p)
    p.add_argument("--baseline", type=Path, help="parity baseline folder (default reports/baselines/MODEL)")
    p.add_argument("--base", help="git ref of the A/B base side (default: configs/regress.yaml base, else the "
                                  "merge-base of HEAD and main, else HEAD~1)")
    p.set_defaults(func=cmd_regress)
    p = sub.add_parser("baseline", help="run with the quick sweep and make it the new committed baseline")
    _model_args(p)
    p.set_defaults(func=cmd_baseline)
    p = sub.add_parser("compare", help="two runs, machines or backends side by side (a = before, b = after)")
    p.add_argument("a", help="a run folder, e.g. reports/baselines/vit_t, optionally ::runtime=mnn,...")
    p.add_argument("b", help="the other run folder, e.g. reports/vit_t")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "compare", help="writes OUT.md and OUT.csv")
    p.add_argument("--fail-on-regression", action="store_true")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("segment", help="segment an image with the MNN models alone (image + prompt in, mask out)")
    p.add_argument("--model", default="vit_t", help="use build/MODEL/mnn/{encoder,decoder}.VARIANT.mnn")
    p.add_argument("--root", type=Path, default=ROOT)
    p.add_argument("--variant", default="recommended",
                   help="MNN variant; default `recommended`: the fastest passing ones in reports/MODEL/recommended.csv "
                        "(with their load options, memory mode included), else fp32; `smallest`: the smallest passing files")
    p.add_argument("--encoder", type=Path, help="MNN encoder file (overrides --model/--variant)")
    p.add_argument("--decoder", type=Path, help="MNN decoder file (overrides --model/--variant)")
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--points", help='x,y pairs in image pixels, ";"-separated: "500,375;620,400"')
    p.add_argument("--labels", help='one per point, 1 foreground / 0 background: "1,0" (default all 1)')
    p.add_argument("--box", help='x0,y0,x1,y1 in image pixels')
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "segment")
    p.add_argument("--threads", type=threads_arg, default=2)
    p.add_argument("--precision", help="MNN precision: normal, high, low, Low_BF16 (default: recommended, else normal)")
    p.add_argument("--upsample", choices=UPSAMPLE,
                   help="fp32 (default): the decoder runs without its in-graph resize and its low_res_masks are "
                        "upsampled here in fp32 (faster on MNN; exact where the decoder computes fp16: precision "
                        "low on ARM, GPU backends); graph: the decoder's own full-size masks. Default: the "
                        "recommended decoder's setting (recommended.csv `upsample`), else fp32")
    p.set_defaults(func=cmd_segment)
    p = sub.add_parser("demo", help="click to segment in the browser: a local page (127.0.0.1) on the MNN models")
    p.add_argument("--model", default="vit_t", help="serve build/MODEL's MNN variants")
    p.add_argument("--root", type=Path, default=ROOT)
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--threads", type=threads_arg, default=2)
    p.add_argument("--idle-minutes", type=minutes_arg, default=30.0, help="stop after this long without a request")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("arm-env", help="build the emulated ARM64 target (Debian arm64 root + MNN's aarch64 wheel "
                                       "under QEMU) in build/targets/arm64, if it is not there")
    p.set_defaults(func=cmd_arm_env)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C: temp files are removed, the run lock is released, and the
        # interrupted stage has no lock entry, so the next run resumes there.
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return args.func(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; the next run resumes at the interrupted stage", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
