"""The benchmark suite runs end to end (--quick, synthetic data) and writes every figure it promises."""

import json
import math
import re
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mnistkit import idx
from tests import synthetic
from tests.conftest import REPO

SECTIONS = "throughput,recipe,download,serving,steps"


def _numbers(summary):
    return [summary[k] for k in ("median", "min", "max")]


def _quick(tmp_path, *flags) -> tuple[dict, str]:
    """`python -m benchmarks --quick FLAGS`, which must succeed; returns its results (results.json) and table."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", *flags, "--output_dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())["results"], (out / "results.md").read_text()


def test_quick_run_writes_table_and_json(synthetic_data, tmp_path):
    # The pipeline section has a test of its own below.
    results, table = _quick(tmp_path, "--seeds", "1", "--sections", SECTIONS, "--data_dir", synthetic_data)
    assert sorted(results) == sorted(SECTIONS.split(","))

    figures = [results["throughput"][k]["examples_per_s"]
               for k in ("trainer", "keras_fit_stock", "keras_fit", "keras_fit_onednn")]
    figures += [results["throughput"]["ratio_vs_keras_fit_stock"], results["throughput"]["ratio_vs_keras_fit"],
                results["download"]["local_dir"]["total_s"], results["download"]["local_dir"]["total_cpu_s"],
                results["download"]["http_loopback"]["total_s"], results["download"]["http_loopback"]["total_cpu_s"],
                results["serving"]["batch1_p50_ms"], results["serving"]["batch1_p99_ms"],
                results["serving"]["batch1_cpu_ms"], results["serving"]["batch1000_examples_per_s"],
                results["serving"]["batch1000_examples_per_cpu_s"],
                results["recipe"]["total_seconds"], results["recipe"]["final_accuracy"],
                results["recipe"]["total_cpu_seconds"], results["recipe"]["plain_keras_fit"]["total_cpu_seconds"],
                results["recipe"]["plain_keras_fit"]["total_seconds"], results["throughput"]["trainer_gflops"],
                results["throughput"]["matmul"]["gflops"], results["throughput"]["matmul_fraction"]]
    figures += [results["steps"][step][k] for step in ("download", "validate", "train", "evaluate", "gate", "export")
                for k in ("wall_s", "cpu_s", "peak_mb")]
    for summary in figures:
        low, high = summary["min"], summary["max"]
        assert all(math.isfinite(v) and v > 0 for v in _numbers(summary)), summary
        assert low <= summary["median"] <= high
    assert results["throughput"]["contenders"]["trainer"]["onednn"] == "1"
    assert results["throughput"]["contenders"]["keras_fit"]["onednn"] == "TensorFlow default"
    assert results["throughput"]["contenders"]["keras_fit_stock"]["onednn"] == "TensorFlow default"
    assert {c["onednn_isa"] for c in results["throughput"]["contenders"].values()} == {"native"}
    # TensorFlow's own answer labels the rows: on a CPU where oneDNN is its default, the forced contender says so.
    in_use = results["throughput"]["contenders"]["keras_fit"]["onednn_in_use"]
    assert results["throughput"]["contenders"]["keras_fit_onednn"]["onednn_in_use"] is True
    assert ("oneDNN on (forced, as the default already is here: the same kernels as the row above)" in table) == in_use
    assert f"Keras fit, project's model, oneDNN {'on' if in_use else 'off'} by TensorFlow's default" in table
    # The seed's CNN: 82 MFLOP per training example, counted from its layers.
    assert round(results["throughput"]["contenders"]["trainer"]["flops_per_example"] / 1e6) == 82
    t = results["throughput"]
    assert t["matmul"]["dtype"] == ("bfloat16" if t["contenders"]["trainer"]["precision"] == "mixed_bfloat16"
                                    else "float32")
    for got, examples, matmul in zip(t["matmul_fraction"]["values"], t["trainer"]["examples_per_s"]["values"],
                                     t["matmul"]["gflops"]["values"]):
        assert math.isclose(got, examples * t["contenders"]["trainer"]["flops_per_example"] / 1e9 / matmul)
    assert all(math.isfinite(v) and v > 0 for v in t["matmul_fraction_per_cpu_s"]["values"])
    # The plain contender is the user's recipe: float32, Adam 1e-3, batch 128, the same parameter count.
    plain = results["recipe"]["plain_keras_fit"]
    assert (plain["precision"], plain["learning_rate"], plain["batch_size"]) == ("float32", 1e-3, 128)
    assert plain["runs"][0]["seed"] == 0 and 0 < plain["final_accuracy"]["median"] <= 1
    # Peak memory is the child's own: TensorFlow's steps hold far more than the data steps, which import none.
    steps = results["steps"]
    assert steps["train"]["peak_mb"]["median"] > 2 * steps["download"]["peak_mb"]["median"]
    assert 5 < steps["download"]["peak_mb"]["median"] < 200
    # The gate imports no TensorFlow; the evaluate step also drew its HTML report, as the pipeline's does.
    assert steps["gate"]["peak_mb"]["median"] < 100 < steps["evaluate"]["peak_mb"]["median"]
    assert steps["rounds"] == 1  # --quick's whole runs of every step.
    assert results["serving"]["batch1_p50_ms"]["median"] <= results["serving"]["batch1_p99_ms"]["median"]
    # The synthetic digits are easy: two epochs of the default recipe over 512 of them (six steps) learn them.
    assert results["recipe"]["final_accuracy"]["median"] >= 0.9

    for row in ("project trainer, examples/s", "ratio trainer / plain Keras fit, stock layers (wall)",
                "ratio trainer / Keras fit, project's model (per CPU-second)", "test accuracy after epoch 1",
                "http_loopback: download (checksums not verified) + validate",  # Synthetic data: no checksums.
                "http_loopback: download + validate, CPU-seconds (the loopback server's included)",
                "local_dir: download + validate, CPU-seconds |", "batch-1 latency p50, ms",
                "batch-1 call, CPU-milliseconds", "batch-1000 throughput, examples per CPU-second",
                "export gate: peak resident MB", "TensorFlow float32 matmul GFLOP/s (1024x1024, main process)",
                "batch-1000 throughput", "trainer GFLOP/s / ", "plain Keras fit (float32, Adam 0.001, batch 128)",
                "mnist-train (--train_epochs=1 --max_train_examples=512): seconds", "mnist-validate: peak resident MB",
                "whole run, CPU-seconds"):
        assert row in table, row
    for line in table.splitlines():
        if line.startswith("| 1 throughput | ratio trainer / plain Keras fit, stock layers (wall)"):
            median = float(line.split("|")[3])
            assert median == round(results["throughput"]["ratio_vs_keras_fit_stock"]["median"], 2)


def test_avx2_stand_in_runs_every_contender_on_avx2_kernels_in_float32(synthetic_data, tmp_path):
    """--isa avx2: oneDNN capped at AVX2 in every worker, float32, and TensorFlow's AVX2 default (oneDNN off)."""
    results, table = _quick(tmp_path, "--rounds", "1", "--sections", "throughput", "--isa", "avx2",
                            "--data_dir", synthetic_data)
    t = results["throughput"]
    assert t["isa"] == "avx2"
    contenders = t["contenders"]
    assert {c["onednn_isa"] for c in contenders.values()} == {"AVX2"}
    assert {c["precision"] for c in contenders.values()} == {"float32"}
    assert t["matmul"]["dtype"] == "float32"
    assert "matmul_gflops" not in t  # The parent's matmul runs on this CPU's own kernels: not reported.
    assert [contenders[k]["onednn"] for k in ("trainer", "keras_fit_stock", "keras_fit", "keras_fit_onednn")] == \
        ["1", "0", "0", "1"]
    assert [contenders[k]["onednn_in_use"] for k in ("trainer", "keras_fit_stock", "keras_fit", "keras_fit_onednn")] \
        == [True, False, False, True]
    assert "(batch 160, float32, AVX2 kernels emulated)" in table
    assert "| 1 throughput | Keras fit, project's model, oneDNN off by TensorFlow's default, examples/s" in table
    assert "| 1 throughput | Keras fit, project's model, oneDNN on, examples/s" in table


def test_quick_pipeline_section_times_both_sides_on_the_same_work(synthetic_data, tmp_path):
    """The whole kfp.local pipeline once against the same steps in one process, both fixed at one epoch."""
    results, table = _quick(tmp_path, "--sections", "pipeline", "--data_dir", synthetic_data)
    p = results["pipeline"]
    assert p["arguments"]["train_epochs"] == 1 and p["arguments"]["stop_threshold"] == 1.0
    pipeline_s, one_s = p["pipeline_s"]["median"], p["one_process_s"]["median"]
    assert 0 < one_s and 0 < pipeline_s
    assert math.isclose(p["ratio"]["median"], pipeline_s / one_s)
    assert math.isclose(p["overhead_s"]["median"], pipeline_s - one_s)
    # CPU-seconds of every process each side ran: kfp.local's step processes are the pipeline's, and each side
    # trains in them, so both are seconds of work, not the parent's idle waiting.
    pipeline_cpu, one_cpu = p["pipeline_cpu_s"]["median"], p["one_process_cpu_s"]["median"]
    assert 1 < one_cpu and 1 < pipeline_cpu
    assert math.isclose(p["cpu_ratio"]["median"], pipeline_cpu / one_cpu)
    assert "| 3 pipeline | overhead ratio |" in table and "| 3 pipeline | overhead, seconds |" in table
    assert "| 3 pipeline | whole local pipeline, CPU-seconds (every step process) |" in table


def test_unknown_section_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--sections", "speed", "--output_dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "--sections: expected names from throughput" in proc.stderr and "'speed'" in proc.stderr
    assert not os.listdir(tmp_path)


def test_unknown_recipe_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--sections", "recipe", "--recipe", "fastest",
                           "--output_dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        "python -m benchmarks: error: --recipe: expected one of fast, seed, found 'fastest'"
    assert not os.listdir(tmp_path)


def test_set_changes_the_recipe_sections_runs_and_names_them(synthetic_data, tmp_path):
    """--set NAME=VALUE reaches the trainer: evaluations every second epoch of three leave epochs 2 and 3 only."""
    results, table = _quick(tmp_path, "--seeds", "1", "--sections", "recipe", "--noplain", "--set", "train_epochs=3",
                            "--set", "epochs_between_evals=2", "--data_dir", synthetic_data)
    recipe = results["recipe"]
    assert recipe["overrides"] == {"train_epochs": 3, "max_train_examples": 512, "epoch_fraction": 1.0,
                                   "epochs_between_evals": 2}
    assert sorted(recipe["runs"][0]["accuracy_by_epoch"]) == ["2", "3"]
    # Each evaluation's weights also scored in float32, as the export gate sees them: the same model, close figures.
    run = recipe["runs"][0]
    assert sorted(run["float32_accuracy_by_epoch"]) == ["2", "3"]
    for epoch, accuracy in run["float32_accuracy_by_epoch"].items():
        assert abs(accuracy - run["accuracy_by_epoch"][epoch]) < 0.05
    assert "plain_keras_fit" not in recipe
    assert "test accuracy after epoch 3, the weights in float32 (as exported;" in table
    assert "recipe fast (train_epochs=3, max_train_examples=512, epoch_fraction=1.0, epochs_between_evals=2): " \
           "test accuracy after epoch 2" in table


def test_a_recipe_batch_larger_than_its_epoch_is_refused_before_anything_runs(synthetic_data, tmp_path):
    """The trainer's own check, made up front on the data's headers: it used to end the run minutes in."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--sections", "throughput,recipe", "--set",
                           "max_train_examples=100", "--data_dir", synthetic_data, "--output_dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "python -m benchmarks: error: --set: batch_size: expected at most the 60 training examples of an epoch, "
        "found 160 (an epoch is epoch_fraction 0.6 of the 100 training examples)")
    assert "benchmarks: throughput ..." not in proc.stderr and not out.exists()


def test_a_section_that_fails_is_one_line_and_the_sections_before_it_are_kept(synthetic_data, tmp_path):
    """A worker's failure ended in a traceback, and the minutes of figures measured before it were lost."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--sections", "download,recipe", "--noplain",
                           "--set", "num_gpus=4", "--data_dir", synthetic_data, "--output_dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "python -m benchmarks: error: section recipe: recipe fast, seed 0: exit 1: ValueError: num_gpus: expected "
        f"at most the 0 GPUs visible, found 4; the sections before it are in {out}")
    assert "Traceback" not in proc.stderr
    assert list(json.loads((out / "results.json").read_text())["results"]) == ["download"]
    assert "| 4 download |" in (out / "results.md").read_text()


def test_a_failed_pipeline_run_is_one_line_too(tmp_path):
    """200 training examples pass the suite's checks (one batch), but not the train step's epoch of 120."""
    data = synthetic.write_dataset(tmp_path / "data", n_train=200, n_test=100)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--sections", "download,pipeline",
                           "--data_dir", data, "--output_dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "python -m benchmarks: error: section pipeline: run_local.py: exit 1: run_local.py: error: step train-model "
        "failed: ValueError: batch_size: expected at most the 120 training examples of an epoch, found 160 (an "
        f"epoch is epoch_fraction 0.6 of the 200 training examples); the sections before it are in {out}")
    assert "Traceback" not in proc.stderr
    assert list(json.loads((out / "results.json").read_text())["results"]) == ["download"]


def test_vertex_ais_checkpoint_directory_does_not_reach_the_runs(synthetic_data, tmp_path):
    """Inherited, $AIP_CHECKPOINT_DIR made a second run resume the first one's finished checkpoints."""
    checkpoints = tmp_path / "aip-checkpoints"
    env = dict(os.environ, AIP_CHECKPOINT_DIR=str(checkpoints))
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--sections", "recipe", "--noplain",
                           "--seeds", "1", "--data_dir", synthetic_data, "--output_dir", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not checkpoints.exists()


def test_a_recipe_setting_does_not_cut_plain_fit_short(synthetic_data, tmp_path):
    """--set train_epochs=1 screens the recipe at one epoch; plain fit keeps its own cap (--quick's 2 epochs)."""
    results, _ = _quick(tmp_path, "--seeds", "1", "--sections", "recipe", "--set", "train_epochs=1",
                            "--data_dir", synthetic_data)
    recipe = results["recipe"]
    assert recipe["overrides"]["train_epochs"] == 1 and list(recipe["runs"][0]["accuracy_by_epoch"]) == ["1"]
    plain = recipe["plain_keras_fit"]
    assert (plain["max_epochs"], plain["max_train_examples"]) == (2, 512)


def test_rounds_reaches_the_sections_that_run_whole_steps(synthetic_data, tmp_path):
    results, _ = _quick(tmp_path, "--rounds", "2", "--sections", "steps", "--data_dir", synthetic_data)
    steps = results["steps"]
    assert steps["rounds"] == 2
    assert all(len(steps[step]["wall_s"]["values"]) == 2 for step in ("download", "train", "gate", "export"))


@pytest.mark.parametrize("setting, message", [
    ("epoch_fraction=0", "--set: epoch_fraction: expected in (0, 100], found 0.0"),
    ("epoch_fraction=most", "--set: epoch_fraction: expected float, found 'most'"),
    ("seed=3", "--set: seed: set by the suite itself (--data_dir, --first_seed, --seeds; each run trains afresh in "
               "a directory of its own), found 3"),
    ("checkpoint_dir=/tmp/ck", "--set: checkpoint_dir: set by the suite itself (--data_dir, --first_seed, --seeds; "
                               "each run trains afresh in a directory of its own), found '/tmp/ck'"),
    ("learning_rat=0.1", "--set: expected name=value with a field of TrainConfig, found 'learning_rat=0.1'"),
])
def test_a_bad_setting_is_a_one_line_error_before_anything_runs(setting, message, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--sections", "throughput,recipe", "--set", setting,
                           "--data_dir", str(tmp_path), "--output_dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"python -m benchmarks: error: {message}"
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "0"], "--seeds: expected at least 1, found 0"),
    (["--first_seed", "-1"], "--first_seed: expected 0 or more, found -1"),
    (["--first_seed", str(2**32 - 2), "--seeds", "3"],
     f"--first_seed: expected seeds below 2**32, found seeds {2**32 - 2} to {2**32}"),
    (["--rounds", "0"], "--rounds: expected at least 1, found 0"),
    (["--train_examples", "100"], "--train_examples: expected at least one batch of the throughput section (160), "
                                  "found 100"),
])
def test_a_bad_count_is_a_one_line_error_before_anything_runs(flags, message, synthetic_data, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *flags, "--data_dir", synthetic_data,
                           "--output_dir", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"python -m benchmarks: error: {message}"
    assert not out.exists()


def test_data_dir_without_the_four_files_is_refused_by_name(synthetic_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(os.path.join(synthetic_data, name), data / name)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--data_dir", str(data), "--output_dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"python -m benchmarks: error: --data_dir: expected a directory with the four MNIST files, found "
        f"'{data}' without t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz")
    assert not out.exists()


def _junk(data):
    (data / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    return "t10k-labels-idx1-ubyte.gz: format: expected gzip data (first bytes 1f 8b), found first bytes 6e 6f"


def _too_few(data):
    synthetic.write_dataset(data, n_train=100)
    return "train-images-idx3-ubyte.gz: count: expected at least 160 examples, one training batch, found 100"


def _labels_short(data):
    idx.write_idx(data / "train-labels-idx1-ubyte.gz", np.zeros(599, np.uint8))
    return ("train-images-idx3-ubyte.gz: count: expected 599 images, as many as train-labels-idx1-ubyte.gz has "
            "labels, found 600")


def _swapped(data):
    os.replace(data / "train-images-idx3-ubyte.gz", data / "swap")
    os.replace(data / "train-labels-idx1-ubyte.gz", data / "train-images-idx3-ubyte.gz")
    os.replace(data / "swap", data / "train-labels-idx1-ubyte.gz")
    return ("train-images-idx3-ubyte.gz: magic number: expected 2051 (0x00000803: an images file), found 2049 "
            "(0x00000801: a labels file)")


@pytest.mark.parametrize("spoil", [_junk, _too_few, _labels_short, _swapped])
def test_data_files_a_section_could_not_use_are_refused_before_the_run(spoil, tmp_path):
    """The four files' headers are read up front: a run is not lost minutes in, to a traceback from a section."""
    data = tmp_path / "data"
    synthetic.write_dataset(data)
    message = spoil(data)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--data_dir", str(data), "--output_dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"python -m benchmarks: error: --data_dir: {data}/")
    assert proc.stderr.strip().endswith(message)
    assert "benchmarks: throughput ..." not in proc.stderr and not out.exists()


def test_an_output_dir_it_cannot_write_is_refused_before_the_run_not_after(synthetic_data, tmp_path):
    # A file where a directory of the path should be: refused whoever runs the test, root included.
    (tmp_path / "plain-file").write_text("")
    out = tmp_path / "plain-file" / "results"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--data_dir", synthetic_data, "--output_dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"python -m benchmarks: error: --output_dir: expected a directory this user can write, found '{out}': "
        "Not a directory")
    assert "benchmarks: throughput ..." not in proc.stderr  # Refused before the first section started.


def test_a_throughput_worker_that_dies_says_why(tmp_path):
    from benchmarks import throughput

    with pytest.raises(RuntimeError) as raised:
        throughput.measure(str(tmp_path / "missing"), examples=512, rounds=1, contenders=("trainer",))
    message = str(raised.value)
    assert message.startswith("throughput worker trainer died (exit 1): ")
    assert str(tmp_path / "missing") in message and "no such directory" in message


def test_the_step_profile_names_the_ops_and_adds_up(synthetic_data):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.profile", "--steps", "3", "--rows", "40",
                           "--data_dir", synthetic_data], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    busy = float(re.search(r"per step: [\d.]+ ms wall, [\d.]+ CPU-ms, ([\d.]+) ms of op time", lines[1])[1])
    rows = [re.fullmatch(r"\s*([\d.]+)\s+([\d.]+)%\s+(.+)", line) for line in lines[4:]]
    assert rows and all(rows), lines
    assert sum(float(r[1]) for r in rows) <= busy * 1.01  # Own times: no op counted inside another.
    names = " ".join(r[3] for r in rows)
    # Every layer's work is there: both convolutions' filter gradients, the dense matmuls, the pools.
    assert names.count("Conv2DBackpropFilter") >= 2 and "MatMul" in names and "MaxPool" in names, names


def test_a_run_left_to_the_default_does_not_write_over_the_kept_results():
    """The default was benchmarks/, so any run, even --quick, replaced the curated results.md the README quotes."""
    from benchmarks import run

    default = run.parser().get_default("output_dir")
    assert os.path.commonpath([default, os.path.join(REPO, "benchmarks")]) != os.path.join(REPO, "benchmarks")
    ignored = subprocess.run(["git", "check-ignore", "-q", os.path.join(default, "results.md")], cwd=REPO)
    assert ignored.returncode == 0, f"{default} is not ignored by git"
