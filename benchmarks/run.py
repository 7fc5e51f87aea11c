"""`python -m benchmarks`: times the trainer, the recipe, the pipeline, downloads, serving and each step.

It writes results.md and results.json. Every figure is a median of several
runs with its min and max; ratios are taken between runs made side by side in
the same invocation. `--quick` runs every section small (synthetic data is
fine) to check that the suite works, not to produce figures worth quoting.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mnistkit import tf_settings  # noqa: E402

tf_settings.apply()  # First: the project's TensorFlow options, before any section loads TensorFlow.
from benchmarks import common  # noqa: E402
from mnistkit import files, idx  # noqa: E402
from mnistkit.recipes import RECIPES  # noqa: E402
from mnistkit.train_config import TrainConfig  # noqa: E402

SECTIONS = ("throughput", "recipe", "pipeline", "download", "serving", "steps")


def default_data_dir() -> str:
    return os.environ.get("MNIST_DATA_DIR") or os.path.join(os.path.dirname(REPO), "shared", "data", "mnist")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"Comma-separated sections to run, of {', '.join(SECTIONS)} (default: all).")
    p.add_argument("--data_dir", default=default_data_dir(), help="The four MNIST files (default %(default)s).")
    # Not benchmarks/: the results.md and results.json there are the kept runs the README quotes, and a run left
    # to the default (even --quick) wrote over them.
    p.add_argument("--output_dir", default=os.path.join(REPO, "local_runs", "benchmarks"),
                   help="Where results.md and results.json go (default %(default)s; benchmarks/ holds the runs "
                        "the README quotes).")
    p.add_argument("--quick", action="store_true",
                   help="Small runs that check the suite works, in a minute or two.")
    p.add_argument("--rounds", type=int,
                   help="Counted rounds per figure (default 5, --quick 2; the pipeline and steps sections, whole "
                        "runs of every step, default 3, --quick 1).")
    p.add_argument("--seeds", type=int, default=3, help="Seeds of the recipe section (default %(default)s).")
    p.add_argument("--train_examples", type=int, default=12_800,
                   help="Examples per epoch of the throughput section (default %(default)s).")
    p.add_argument("--first_seed", type=int, default=0, help="The recipe section's first seed (default 0).")
    p.add_argument("--recipe", default="fast", help="The recipe of the recipe section (default %(default)s).")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                   help="Run the recipe section's recipe with this TrainConfig field changed, e.g. --set "
                        "epoch_fraction=0.6; repeat for more fields. With --noplain and an --output_dir elsewhere, "
                        "this is how recipes are screened.")
    p.add_argument("--noplain", dest="plain", action="store_false",
                   help="Leave plain Keras fit out of the recipe section (it takes minutes per seed).")
    p.add_argument("--isa", default="native", choices=("native", "avx2"),
                   help="The throughput section's kernels: this CPU's, or AVX2's as a stand-in for an AVX2-only "
                        "CPU (oneDNN capped at AVX2, float32; default %(default)s).")
    return p


# TrainConfig fields the suite sets itself: each run trains afresh, in a directory of its own.
SUITE_OWNED = ("data_dir", "model_dir", "seed", "checkpoint_dir", "tensorboard_dir", "clean")


def recipe_settings(recipe: str, texts: list[str], data_dir: str) -> dict:
    """The --set NAME=VALUE texts as TrainConfig overrides, checked against the fields' ranges before any run."""
    from mnistkit import train_config

    settings = dict(train_config.parse_setting(text) for text in texts)
    suite_owned = [name for name in SUITE_OWNED if name in settings]
    if suite_owned:
        raise ValueError(f"{suite_owned[0]}: set by the suite itself (--data_dir, --first_seed, --seeds; each run "
                         f"trains afresh in a directory of its own), found {settings[suite_owned[0]]!r}")
    train_config.TrainConfig.from_recipe(recipe, data_dir=data_dir, model_dir="unused", **settings).check()
    return settings


def recipe_overrides(quick: bool, settings: dict | None) -> dict:
    """The recipe section's TrainConfig overrides: --quick's small runs, then the --set ones."""
    # Two epochs of the whole 512 examples (three steps each): the fast recipe's shortened epochs would
    # be a step or two each, too few to learn even the synthetic digits reliably.
    quick_runs = dict(train_epochs=2, max_train_examples=512, epoch_fraction=1.0) if quick else {}
    return {**quick_runs, **(settings or {})}


class SectionFailed(Exception):
    """A section's worker failed; `results` holds the sections measured before it."""

    def __init__(self, section: str, error: Exception | str, results: dict):
        super().__init__(f"section {section}: {error}")
        self.results = results


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


def run_sections(sections: list[str], data_dir: str, quick: bool, rounds: int | None, seeds,
                 train_examples: int = 12_800, recipe_name: str = "fast", plain: bool = True,
                 isa: str = "native", settings: dict | None = None) -> dict:
    """Runs `sections` in order; `rounds` None means each section's default (see --rounds)."""
    results = {}
    # The pipeline and steps sections run every step whole, so they default to fewer rounds.
    whole_runs = rounds or (1 if quick else 3)
    rounds = rounds or (2 if quick else 5)
    for section in sections:
        print(f"benchmarks: {section} ...", file=sys.stderr, flush=True)
        try:
            results[section] = _run_section(section, data_dir, quick, rounds, whole_runs, seeds, train_examples,
                                            recipe_name, plain, isa, settings)
        except RuntimeError as e:  # A worker died: its last line says why.
            raise SectionFailed(section, e, results) from e
        except subprocess.CalledProcessError as e:  # A whole run of the steps failed (pipeline section).
            said = (e.stderr or b"").decode(errors="replace").strip().splitlines() or ["(no output)"]
            raise SectionFailed(section, f"{os.path.basename(e.cmd[1])}: exit {e.returncode}: {said[-1]}",
                                results) from e
    return results


def _run_section(section: str, data_dir: str, quick: bool, rounds: int, whole_runs: int, seeds, train_examples: int,
                 recipe_name: str, plain: bool, isa: str, settings: dict | None) -> dict:
    """The figures of one section."""
    if section == "throughput":
        from benchmarks import throughput

        result = throughput.measure(data_dir, examples=512 if quick else train_examples, rounds=rounds, isa=isa)
        if isa == "native":  # This process's kernels are the CPU's own, not the stand-in's.
            size = 1024 if quick else 2048
            result["matmul_gflops"], result["matmul_gflops_size"] = throughput.matmul_gflops(size), size
        return result
    if section == "recipe":
        from benchmarks import recipe

        # The plain contender is bounded by its own caps, never by a --set of the recipe's: a recipe screened
        # at one epoch must not cut plain fit short of 99.0%.
        plain_caps = dict(plain_epochs=2, plain_examples=512) if quick else {}
        return recipe.measure(data_dir, seeds=tuple(seeds), recipe=recipe_name, plain=plain, **plain_caps,
                              **recipe_overrides(quick, settings))
    if section == "pipeline":
        from benchmarks import pipeline_overhead

        arguments = dict(train_epochs=1, max_train_examples=512, verify_checksums=False) if quick else {}
        return pipeline_overhead.measure(data_dir, arguments, rounds=whole_runs)
    if section == "download":
        from benchmarks import download

        return download.measure(data_dir, rounds=rounds)
    if section == "serving":
        return _serving(data_dir, quick, rounds)
    from benchmarks import steps

    train_args = ("--train_epochs=1", "--max_train_examples=512") if quick else ("--train_epochs=1",)
    return steps.measure(data_dir, rounds=whole_runs, train_args=train_args)


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
        kernels = ", AVX2 kernels emulated" if t.get("isa") == "avx2" else ""
        labels = (("trainer", "project trainer"), ("keras_fit_stock", "plain Keras fit, stock layers"),
                  ("keras_fit", "Keras fit, project's model"),
                  ("keras_fit_onednn", "Keras fit, project's model, oneDNN on"))
        # Whether oneDNN ran, as the workers' TensorFlow said (runs kept from before it was recorded do not say).
        in_use = t["contenders"].get("keras_fit", {}).get("onednn_in_use")
        default = {True: ", oneDNN on by TensorFlow's default", False: ", oneDNN off by TensorFlow's default"}
        said = {"keras_fit_stock": default.get(in_use, ""), "keras_fit": default.get(in_use, ""),
                "keras_fit_onednn": " (forced, as the default already is here: the same kernels as the row above)"
                if in_use else ""}
        for kind, label in labels:
            if kind in t:
                row("1 throughput", f"{label}{said.get(kind, '')}, examples/s (batch {info['batch_size']}, "
                    f"{info['precision']}{kernels})", t[kind]["examples_per_s"], ".0f")
                row("1 throughput", f"{label}, examples per CPU-second", t[kind]["examples_per_cpu_s"], ".0f")
        for kind, label in labels[1:]:
            if f"ratio_vs_{kind}" in t:
                row("1 throughput", f"ratio trainer / {label} (wall)", t[f"ratio_vs_{kind}"], ".2f")
                row("1 throughput", f"ratio trainer / {label} (per CPU-second)", t[f"cpu_ratio_vs_{kind}"], ".2f")
        if "matmul_gflops" in t:
            size = t.get("matmul_gflops_size", 2048)  # Runs kept from before it was recorded ran 2048.
            row("1 throughput", f"TensorFlow float32 matmul GFLOP/s ({size}x{size}, main process)",
                {"median": t["matmul_gflops"], "min": t["matmul_gflops"], "max": t["matmul_gflops"], "n": 1}, ".0f")
        if "matmul_fraction" in t:
            mm = t["matmul"]
            row("1 throughput", f"trainer GFLOP/s ({info['flops_per_example'] / 1e6:.1f} MFLOP per example)",
                t["trainer_gflops"], ".0f")
            row("1 throughput", f"{mm['dtype']} matmul GFLOP/s ({mm['size']}x{mm['size']}, after each trainer epoch)",
                mm["gflops"], ".0f")
            row("1 throughput", f"trainer GFLOP/s / {mm['dtype']} matmul GFLOP/s, round by round (wall)",
                t["matmul_fraction"], ".2f")
            row("1 throughput", "trainer GFLOP per CPU-second", t["trainer_gflops_per_cpu_s"], ".0f")
            row("1 throughput", f"{mm['dtype']} matmul GFLOP per CPU-second", mm["gflops_per_cpu_s"], ".0f")
            row("1 throughput", f"trainer / {mm['dtype']} matmul, per CPU-second, round by round",
                t["matmul_fraction_per_cpu_s"], ".2f")
    if "recipe" in r:
        c = r["recipe"]
        changed = ", ".join(f"{k}={v}" for k, v in c["overrides"].items())
        contenders = [(f"recipe {c['recipe']}{f' ({changed})' if changed else ''}", c)]
        if "plain_keras_fit" in c:
            p = c["plain_keras_fit"]
            contenders.append((f"plain Keras fit ({p['precision']}, Adam {p['learning_rate']:g}, "
                               f"batch {p['batch_size']})", p))
        for name, x in contenders:
            row("2 recipe", f"{name}: seconds to {c['target']:.1%} test accuracy (reached {x['reached_target']})",
                x["seconds_to_target"])
            row("2 recipe", f"{name}: CPU-seconds to {c['target']:.1%}", x["cpu_seconds_to_target"])
            row("2 recipe", f"{name}: epochs to {c['target']:.1%}", x["epoch_to_target"], ".0f")
            for epoch, s in x["accuracy_by_epoch"].items():
                row("2 recipe", f"{name}: test accuracy after epoch {epoch}", s, ".4f")
            for epoch, s in x.get("float32_accuracy_by_epoch", {}).items():
                row("2 recipe", f"{name}: test accuracy after epoch {epoch}, the weights in float32 (as exported; "
                    f"{x['float32_at_target']} at {c['target']:.1%} where training's evaluation first was)", s,
                    ".4f")
            row("2 recipe", f"{name}: whole run, seconds", x["total_seconds"])
            if "total_cpu_seconds" in x:  # Runs kept from before it was measured have none.
                row("2 recipe", f"{name}: whole run, CPU-seconds", x["total_cpu_seconds"])
        if c.get("speedup"):
            # The median of seed-by-seed ratios, over the seeds where both contenders reached the target.
            both = f"seeds where both reached it: {c['speedup']['n']} of {len(c['runs'])}"
            row("2 recipe", f"speedup to {c['target']:.1%}: plain fit seconds / recipe seconds, seed by seed "
                f"(wall; {both})", c["speedup"], ".1f")
            row("2 recipe", f"speedup to {c['target']:.1%}, seed by seed (per CPU-second; {both})",
                c["cpu_speedup"], ".1f")
    if "pipeline" in r:
        p = r["pipeline"]
        if "status" in p:
            lines.append(f"| 3 pipeline | {p['status']} | | | | |")
        else:
            row("3 pipeline", "whole local pipeline (kfp.local), seconds", p["pipeline_s"])
            row("3 pipeline", "same steps in one process, seconds", p["one_process_s"])
            row("3 pipeline", "overhead ratio", p["ratio"], ".2f")
            row("3 pipeline", "overhead, seconds", p["overhead_s"])
            if "pipeline_cpu_s" in p:  # Runs kept from before it was measured have none.
                row("3 pipeline", "whole local pipeline, CPU-seconds (every step process)", p["pipeline_cpu_s"])
                row("3 pipeline", "same steps in one process, CPU-seconds", p["one_process_cpu_s"])
                row("3 pipeline", "overhead ratio, per CPU-second", p["cpu_ratio"], ".2f")
                row("3 pipeline", "overhead, CPU-seconds", p["cpu_overhead_s"])
    if "download" in r:
        d = r["download"]
        checked = "verified" if d.get("checksums_verified", True) else "checksums not verified"
        for kind in ("local_dir", "http_loopback"):
            row("4 download", f"{kind}: download ({checked}) + validate, seconds", d[kind]["total_s"], ".2f")
            if "total_cpu_s" in d[kind]:
                server = " (the loopback server's included)" if kind == "http_loopback" else ""
                row("4 download", f"{kind}: download + validate, CPU-seconds{server}", d[kind]["total_cpu_s"], ".2f")
            row("4 download", f"{kind}: of which validate, seconds", d[kind]["validate_s"], ".2f")
    if "serving" in r:
        s = r["serving"]
        row("5 serving", "batch-1 latency p50, ms", s["batch1_p50_ms"], ".2f")
        row("5 serving", "batch-1 latency p99, ms", s["batch1_p99_ms"], ".2f")
        if "batch1_cpu_ms" in s:
            row("5 serving", "batch-1 call, CPU-milliseconds", s["batch1_cpu_ms"], ".2f")
        row("5 serving", "batch-1000 throughput, examples/s", s["batch1000_examples_per_s"], ".0f")
        if "batch1000_examples_per_cpu_s" in s:
            row("5 serving", "batch-1000 throughput, examples per CPU-second", s["batch1000_examples_per_cpu_s"],
                ".0f")
    if "steps" in r:
        st = r["steps"]
        for step in ("download", "validate", "train", "evaluate", "gate", "export"):
            if step not in st:  # Runs kept from before the gate was measured.
                continue
            name = "export gate" if step == "gate" else f"mnist-{step}"
            flags = f" ({' '.join(st['train_args'])})" if step == "train" else ""
            digits = ".2f" if step == "gate" else ".1f"  # The gate takes a few hundredths of a second.
            row("6 steps", f"{name}{flags}: seconds", st[step]["wall_s"], digits)
            row("6 steps", f"{name}: CPU-seconds", st[step]["cpu_s"], digits)
            row("6 steps", f"{name}: peak resident MB", st[step]["peak_mb"], ".0f")
    return "\n".join(lines) + "\n"


def _check_headers(data_dir: str, batch: int) -> int:
    """Reads the four files' headers: IDX files of 28x28 images and labels, as many of each, a batch to train on.

    Every section trains or reads them, so a file only a header away from
    unusable is refused here, not by a traceback minutes into the run. The
    data itself is checked by the sections, as the pipeline checks it.
    Returns the training examples.
    """
    counts = {}
    for split in idx.SPLITS:
        images_path = os.path.join(data_dir, split.images)
        try:
            images = idx.read_shape(images_path, idx.IMAGES_MAGIC)
            labels = idx.read_shape(os.path.join(data_dir, split.labels), idx.LABELS_MAGIC)
            if images[1:] != (idx.IMAGE_SIZE, idx.IMAGE_SIZE):
                raise idx.DataError(images_path, "image size", f"{idx.IMAGE_SIZE}x{idx.IMAGE_SIZE}",
                                    "x".join(map(str, images[1:])))
            if images[0] != labels[0]:  # As idx.load_split words it.
                raise idx.DataError(images_path, "count", f"{labels[0]} images, as many as {split.labels} has labels",
                                    images[0])
            least = f"at least {batch} examples, one training batch" if split is idx.TRAIN else "at least 1 example"
            if images[0] < (batch if split is idx.TRAIN else 1):
                raise idx.DataError(images_path, "count", least, images[0])
        except idx.DataError as e:
            raise ValueError(f"--data_dir: {e}") from e
        counts[split.name] = images[0]
    return counts[idx.TRAIN.name]


def check_arguments(args: argparse.Namespace) -> tuple[list[str], dict]:
    """Checks the command line before any section runs; returns the sections and the --set overrides.

    A whole run is never lost to a flag only its last section or its final
    write would have tripped over. The output directory is checked last, by
    creating it and a file in it, so a command refused for anything else
    leaves nothing behind.

    Raises:
      ValueError: `--flag: expected ..., found ...` for the first flag that is wrong.
    """
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if not sections or any(s not in SECTIONS for s in sections):
        raise ValueError(f"--sections: expected names from {', '.join(SECTIONS)}, found {args.sections!r}")
    if args.recipe not in RECIPES:
        raise ValueError(f"--recipe: expected one of {', '.join(RECIPES)}, found {args.recipe!r}")
    batch = RECIPES["fast"]["batch_size"]  # The throughput section's contenders train the fast recipe's batches.
    for flag, value, least, what in (("--seeds", args.seeds, 1, "at least 1"),
                                     ("--first_seed", args.first_seed, 0, "0 or more"),
                                     ("--rounds", args.rounds, 1, "at least 1"),
                                     ("--train_examples", args.train_examples, batch,
                                      f"at least one batch of the throughput section ({batch})")):
        if value is not None and value < least:
            raise ValueError(f"{flag}: expected {what}, found {value}")
    if args.first_seed + args.seeds > 2**32:
        raise ValueError(f"--first_seed: expected seeds below 2**32, found seeds {args.first_seed} to "
                         f"{args.first_seed + args.seeds - 1}")
    try:
        settings = recipe_settings(args.recipe, args.settings, args.data_dir)
    except ValueError as e:
        raise ValueError(f"--set: {e}") from e
    if not os.path.isdir(args.data_dir):
        raise ValueError(f"--data_dir: expected a directory with the four MNIST files, found {args.data_dir!r} "
                         "missing")
    missing = [name for name in idx.FILES if not os.path.isfile(os.path.join(args.data_dir, name))]
    if missing:
        raise ValueError(f"--data_dir: expected a directory with the four MNIST files, found {args.data_dir!r} "
                         f"without {', '.join(missing)}")
    train_examples = _check_headers(args.data_dir, batch)
    if "recipe" in sections:  # The recipe's epoch against its batch: the trainer would refuse it minutes in.
        config = TrainConfig.from_recipe(args.recipe, data_dir=args.data_dir, model_dir="unused",
                                         **recipe_overrides(args.quick, settings))
        try:
            config.epoch_examples(train_examples)
        except ValueError as e:
            raise ValueError(f"--set: {e}") from e
    try:
        os.makedirs(args.output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.output_dir):
            pass
    except OSError as e:
        raise ValueError(f"--output_dir: expected a directory this user can write, found {args.output_dir!r}: "
                         f"{e.strerror or e}") from e
    return sections, settings


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        sections, settings = check_arguments(args)
    except ValueError as e:
        print(f"python -m benchmarks: error: {e}", file=sys.stderr)
        return 1
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": common.machine(),
              "quick": args.quick, "data_dir": os.path.abspath(args.data_dir),
              "rounds": args.rounds or (2 if args.quick else 5),
              "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])}
    try:
        report["results"] = run_sections(sections, args.data_dir, args.quick, args.rounds,
                                         range(args.first_seed, args.first_seed + args.seeds), args.train_examples,
                                         args.recipe, args.plain, args.isa, settings)
    except SectionFailed as e:  # What the sections before it measured is kept.
        report["results"] = e.results
        if e.results:
            _write(report, args.output_dir)
        kept = f"; the sections before it are in {args.output_dir}" if e.results else ""
        print(f"python -m benchmarks: error: {e}{kept}", file=sys.stderr)
        return 1
    _write(report, args.output_dir)
    print(to_markdown(report))
    return 0


def _write(report: dict, output_dir: str) -> None:
    files.atomic_write_text(os.path.join(output_dir, "results.json"), json.dumps(report, indent=2) + "\n")
    files.atomic_write_text(os.path.join(output_dir, "results.md"), to_markdown(report))


if __name__ == "__main__":
    sys.exit(main())
