"""`python -m benchmarks`: measures the trainer, the recipe, the pipeline, downloads and serving; writes results.md/json.

Every figure is a median of several runs with its min and max; ratios are
taken between runs made side by side in the same invocation. `--quick` runs
every section small (synthetic data is fine) to check that the suite works,
not to produce figures worth quoting.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import mnistkit  # noqa: E402,F401  (first: it sets TensorFlow's CPU options before TensorFlow loads)
from benchmarks import common  # noqa: E402
from mnistkit import files  # noqa: E402

SECTIONS = ("throughput", "recipe", "pipeline", "download", "serving")


def default_data_dir() -> str:
    return os.environ.get("MNIST_DATA_DIR") or os.path.join(os.path.dirname(REPO), "shared", "data", "mnist")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"Comma-separated sections to run, of {', '.join(SECTIONS)} (default: all).")
    p.add_argument("--data_dir", default=default_data_dir(), help="The four MNIST files (default %(default)s).")
    p.add_argument("--output_dir", default=os.path.join(REPO, "benchmarks"),
                   help="Where results.md and results.json go (default %(default)s).")
    p.add_argument("--quick", action="store_true", help="Small runs that check the suite works, in about a minute.")
    p.add_argument("--rounds", type=int, help="Counted rounds per figure (default 5, --quick 2).")
    p.add_argument("--seeds", type=int, default=3, help="Seeds of the recipe section (default %(default)s).")
    p.add_argument("--train_examples", type=int, default=12_800,
                   help="Examples per epoch of the throughput section (default %(default)s).")
    p.add_argument("--first_seed", type=int, default=0, help="The recipe section's first seed (default 0).")
    return p


def _serving(data_dir: str, quick: bool, rounds: int) -> dict:
    from benchmarks import serving
    from mnistkit import exporting, training

    with tempfile.TemporaryDirectory(prefix="mnistkit-bench-serving-") as tmp:
        # Latency does not depend on how well the weights learned: a short run is enough to export.
        training.train(training.TrainConfig.from_recipe("fast", data_dir=data_dir, model_dir=os.path.join(tmp, "m"),
                                                        train_epochs=1, max_train_examples=512))
        path = exporting.export(os.path.join(tmp, "m"), os.path.join(tmp, "export"))
        return serving.measure(path, data_dir, single_calls=100 if quick else 1000, large_calls=2 if quick else 10,
                               rounds=rounds)


def run_sections(sections: list[str], data_dir: str, quick: bool, rounds: int, seeds,
                 train_examples: int = 12_800) -> dict:
    results = {}
    for section in sections:
        print(f"benchmarks: {section} ...", file=sys.stderr, flush=True)
        if section == "throughput":
            from benchmarks import throughput

            results[section] = throughput.measure(data_dir, examples=512 if quick else train_examples, rounds=rounds)
            results[section]["matmul_gflops"] = throughput.matmul_gflops(1024 if quick else 2048)
        elif section == "recipe":
            from benchmarks import recipe

            overrides = dict(train_epochs=1, max_train_examples=512) if quick else {}
            results[section] = recipe.measure(data_dir, seeds=tuple(seeds), **overrides)
        elif section == "pipeline":
            from benchmarks import pipeline_overhead

            arguments = dict(train_epochs=1, max_train_examples=512, verify_checksums=False) if quick else {}
            results[section] = pipeline_overhead.measure(data_dir, arguments, rounds=1 if quick else 3)
        elif section == "download":
            from benchmarks import download

            results[section] = download.measure(data_dir, rounds=rounds)
        elif section == "serving":
            results[section] = _serving(data_dir, quick, rounds)
    return results


def _cell(s: dict | None, fmt: str) -> list[str]:
    if not s:
        return ["not reached", "", "", ""]
    return [format(s["median"], fmt), format(s["min"], fmt), format(s["max"], fmt), str(s["n"])]


def to_markdown(report: dict) -> str:
    """The table of figures, one row each: median, min, max, runs."""
    m = report["machine"]
    lines = [f"# Benchmarks{' (--quick: checks the suite, figures not meaningful)' if report['quick'] else ''}",
             "", f"Measured {report['date']} on {m['cpu']}, {m['cores']} cores ({', '.join(m['simd'])}), "
             f"load average {m['load_average_1m']:.1f} at the start (the machine is shared). Data: "
             f"`{report['data_dir']}`. Command: `{report['command']}`.", "",
             "| section | figure | median | min | max | runs |", "|---|---|---:|---:|---:|---:|"]

    def row(section, figure, s, fmt=".1f"):
        lines.append("| " + " | ".join([section, figure, *_cell(s, fmt)]) + " |")

    r = report["results"]
    if "throughput" in r:
        t = r["throughput"]
        info = t["contenders"]["trainer"]
        for kind, label in (("trainer", "project trainer"), ("keras_fit", "plain Keras fit (TF defaults)"),
                            ("keras_fit_onednn", "Keras fit, oneDNN on")):
            if kind in t:
                row("1 throughput", f"{label}, examples/s (batch {info['batch_size']}, {info['precision']})",
                    t[kind]["examples_per_s"], ".0f")
        for kind, label in (("keras_fit", "plain Keras fit"), ("keras_fit_onednn", "Keras fit with oneDNN")):
            if f"ratio_vs_{kind}" in t:
                row("1 throughput", f"ratio trainer / {label} (wall)", t[f"ratio_vs_{kind}"], ".2f")
                row("1 throughput", f"ratio trainer / {label} (per CPU-second)", t[f"cpu_ratio_vs_{kind}"], ".2f")
        row("1 throughput", "TensorFlow float32 matmul GFLOP/s (2048x2048)",
            {"median": t["matmul_gflops"], "min": t["matmul_gflops"], "max": t["matmul_gflops"], "n": 1}, ".0f")
    if "recipe" in r:
        c = r["recipe"]
        row("2 recipe", f"seconds to {c['target']:.1%} test accuracy (reached {c['reached_target']})",
            c["seconds_to_target"])
        for epoch, s in c["accuracy_by_epoch"].items():
            row("2 recipe", f"test accuracy after epoch {epoch}", s, ".4f")
        row("2 recipe", "whole run, seconds", c["total_seconds"])
    if "pipeline" in r:
        p = r["pipeline"]
        if "status" in p:
            lines.append(f"| 3 pipeline | {p['status']} | | | | |")
        else:
            row("3 pipeline", "whole local pipeline (kfp.local), seconds", p["pipeline_s"])
            row("3 pipeline", "same steps in one process, seconds", p["one_process_s"])
            row("3 pipeline", "overhead ratio", p["ratio"], ".2f")
            row("3 pipeline", "overhead, seconds", p["overhead_s"])
    if "download" in r:
        d = r["download"]
        for kind in ("local_dir", "http_loopback"):
            row("4 download", f"{kind}: download (verified) + validate, seconds", d[kind]["total_s"], ".2f")
            row("4 download", f"{kind}: of which validate, seconds", d[kind]["validate_s"], ".2f")
    if "serving" in r:
        s = r["serving"]
        row("5 serving", "batch-1 latency p50, ms", s["batch1_p50_ms"], ".2f")
        row("5 serving", "batch-1 latency p99, ms", s["batch1_p99_ms"], ".2f")
        row("5 serving", "batch-1000 throughput, examples/s", s["batch1000_examples_per_s"], ".0f")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        print(f"python -m benchmarks: error: --sections: expected names from {', '.join(SECTIONS)}, "
              f"found {args.sections!r}", file=sys.stderr)
        return 1
    if not os.path.isdir(args.data_dir):
        print(f"python -m benchmarks: error: --data_dir: expected a directory with the four MNIST files, "
              f"found {args.data_dir!r} missing", file=sys.stderr)
        return 1
    rounds = args.rounds or (2 if args.quick else 5)
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": common.machine(),
              "quick": args.quick, "data_dir": os.path.abspath(args.data_dir), "rounds": rounds,
              "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])}
    report["results"] = run_sections(sections, args.data_dir, args.quick, rounds,
                                     range(args.first_seed, args.first_seed + args.seeds), args.train_examples)
    os.makedirs(args.output_dir, exist_ok=True)
    files.atomic_write_text(os.path.join(args.output_dir, "results.json"), json.dumps(report, indent=2) + "\n")
    files.atomic_write_text(os.path.join(args.output_dir, "results.md"), to_markdown(report))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
