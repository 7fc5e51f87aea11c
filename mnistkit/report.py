"""The evaluation's HTML report: the run's figures in one self-contained page (images inline, nothing fetched).

The page holds the test accuracy and loss after each evaluation (from the
training history), the confusion matrix as a heat map, per-class precision and
recall, the most confidently misclassified test digits and the class histogram
of both splits. Figures are matplotlib PNGs embedded as data: URIs, so the page
renders the same from a local disk, a Cloud Storage bucket or the Vertex AI
console's HTML viewer, with no network access. No TensorFlow here: the numbers
come from `mnistkit.evaluation.evaluate`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os

import numpy as np

from mnistkit import files, idx

REPORT_FILE = "report.html"
# Equal to training.HISTORY_FILE (a test checks it); importing training would load TensorFlow.
HISTORY_FILE = "history.json"
DIGITS = tuple(range(idx.NUM_CLASSES))
# A misclassified digit is drawn at this many screen pixels a side (3x its 28 pixels).
DIGIT_PIXELS = 84


def load_history(model_dir: str) -> list[dict]:
    """The evaluations training recorded in `model_dir` (epoch, loss, accuracy, and the precision they ran in when
    the file says); [] when it wrote none.

    Raises:
      ValueError: history.json is there but is not the JSON that training writes.
    """
    path = os.path.join(model_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            evaluations = json.load(f)["evaluations"]
        return [{"epoch": int(e["epoch"]), "loss": float(e["loss"]), "accuracy": float(e["accuracy"]),
                 **({"evaluated_in": str(e["evaluated_in"])} if "evaluated_in" in e else {})}  # Older files lack it.
                for e in evaluations]
    except (ValueError, KeyError, TypeError, OverflowError) as e:  # OverflowError: an epoch of 1e400.
        raise ValueError(f"{path}: expected training's history ({{'evaluations': [{{'epoch', 'loss', "
                         f"'accuracy'}}, ...]}}), found unreadable content ({type(e).__name__}: {e})") from e


def class_counts(data_dir: str) -> dict[str, list[int]]:
    """Examples per digit in each split of `data_dir`, as the data validation report counts them."""
    return {split.name: np.bincount(idx.read_labels(os.path.join(data_dir, split.labels)),
                                    minlength=idx.NUM_CLASSES).tolist()
            for split in idx.SPLITS}


def write_report(path: str, model_dir: str, data_dir: str, result: dict) -> str:
    """Writes the report of `result` (what evaluation.evaluate returned) to `path`; returns `path`.

    The file is replaced whole, so a reader never sees half a report.
    """
    files.atomic_write_text(path, page_of(model_dir, data_dir, result))
    return path


def page_of(model_dir: str, data_dir: str, result: dict) -> str:
    """The report of `result`: the history from `model_dir`, the class counts and the pictures of the
    misclassified digits from `data_dir`."""
    test_images, _ = idx.load_split(data_dir, idx.TEST)
    return render(result, load_history(model_dir), class_counts(data_dir), test_images,
                  source=f"model {os.path.abspath(model_dir)}, data {os.path.abspath(data_dir)}")


def render(result: dict, history: list[dict], counts: dict[str, list[int]], test_images: np.ndarray,
           source: str = "") -> str:
    """The report as one HTML page.

    Args:
      result: What evaluation.evaluate returned.
      history: The evaluations during training (load_history).
      counts: Examples per digit of each split (class_counts).
      test_images: The test split's images, to draw the misclassified ones.
      source: One line saying which model and data the report is about.
    """
    errors = result.get("most_confident_errors", [])
    sections = [
        _section("Test accuracy and loss after each evaluation", _history_body(history)),
        _section("Confusion matrix", _img(_confusion_figure(np.array(result["confusion_matrix"])),
                                          "Confusion matrix: true digit by row, predicted digit by column")),
        _section("Precision and recall per digit",
                 _img(_per_class_figure(result["precision"], result["recall"]), "Precision and recall per digit")
                 + _per_class_table(result)),
        _section("Most confidently misclassified test digits", _errors_body(errors, test_images)),
        _section("Examples per digit in the data",
                 _img(_histogram_figure(counts), "Examples per digit in each split") + _counts_table(counts)),
    ]
    summary = (f"Test accuracy <b>{result['accuracy']:.4f}</b>, loss <b>{result['loss']:.4f}</b> "
               f"on {result['examples']:,} test examples; {len(history)} evaluation(s) during training.")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MNIST run report</title>
<style>{_CSS}</style>
</head>
<body>
<h1>MNIST run report</h1>
<p class="summary">{summary}</p>
<p class="source">{html.escape(source)}</p>
{''.join(sections)}
</body>
</html>
"""


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 60em; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.source { color: #666; font-size: 0.85em; word-break: break-all; }
img.figure { max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
.errors { display: flex; flex-wrap: wrap; gap: 0.6em; }
.errors figure { margin: 0; text-align: center; font-size: 0.8em; width: 7.5em; }
.errors img { image-rendering: pixelated; border: 1px solid #999; }
"""


def _section(title: str, body: str) -> str:
    return f'<section>\n<h2>{html.escape(title)}</h2>\n{body}\n</section>\n'


def _img(data_uri: str, alt: str) -> str:
    return f'<img class="figure" src="{data_uri}" alt="{html.escape(alt)}">\n'


def _png(figure) -> str:
    """The figure as a PNG data: URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float, height: float, **subplots):
    # matplotlib.figure.Figure, not pyplot: no global state and no GUI backend, safe in any process.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots(**subplots)


def _history_body(history: list[dict]) -> str:
    if not history:
        return "<p>No evaluation was recorded during training (no history.json in the model directory).</p>"
    figure, (accuracy_axes, loss_axes) = _figure(9, 3.2, ncols=2)
    epochs = [e["epoch"] for e in history]
    accuracy_axes.plot(epochs, [e["accuracy"] for e in history], "o-", color="tab:blue")
    accuracy_axes.set(title="Test accuracy", xlabel="epoch")
    loss_axes.plot(epochs, [e["loss"] for e in history], "o-", color="tab:red")
    loss_axes.set(title="Test loss", xlabel="epoch")
    # matplotlib pads the range around the points; an accuracy axis running past 1 would mislead.
    accuracy_axes.set_ylim(top=min(accuracy_axes.get_ylim()[1], 1.0))
    for axes in (accuracy_axes, loss_axes):
        if len(epochs) <= 20:
            axes.set_xticks(epochs)
        axes.grid(alpha=0.3)
    rows = "".join(f"<tr><td>{e['epoch']}</td><td>{e['accuracy']:.4f}</td><td>{e['loss']:.4f}</td></tr>"
                   for e in history)
    lower = sorted({e["evaluated_in"] for e in history if e.get("evaluated_in", "float32") != "float32"})
    note = (f"<p>Evaluated during training in {html.escape(', '.join(lower))}, the training precision; the figures "
            "at the top score the same weights in float32, as the export gate and serving run them, and can differ "
            "by a few test examples.</p>") if lower else ""
    return (_img(_png(figure), "Test accuracy and loss by epoch")
            + f"<table><tr><th>epoch</th><th>accuracy</th><th>loss</th></tr>{rows}</table>" + note)


def _confusion_figure(confusion: np.ndarray) -> str:
    from matplotlib.colors import PowerNorm

    figure, axes = _figure(6, 5.4)
    # A power norm lifts the few errors off the floor next to the large diagonal.
    shown = axes.imshow(confusion, cmap="Blues", norm=PowerNorm(0.3, vmin=0, vmax=max(int(confusion.max()), 1)))
    figure.colorbar(shown, ax=axes, shrink=0.8, label="test examples")
    axes.set(xticks=DIGITS, yticks=DIGITS, xlabel="predicted digit", ylabel="true digit")
    threshold = confusion.max() * 0.35
    for (row, col), count in np.ndenumerate(confusion):
        if count:
            axes.text(col, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if count > threshold else "black")
    return _png(figure)


def _per_class_figure(precision: list[float | None], recall: list[float | None]) -> str:
    figure, axes = _figure(8, 3.2)
    positions = np.arange(idx.NUM_CLASSES)
    values = {name: np.array([np.nan if v is None else v for v in figures], dtype=float)
              for name, figures in (("precision", precision), ("recall", recall))}
    # Points, not bars: the axis is zoomed to the values (MNIST's are all near 1), and a bar that does not start
    # at 0 would misstate the ratios. An undefined figure (None) is left out.
    for (name, figure_values), shift, color in zip(values.items(), (-0.12, 0.12), ("tab:blue", "tab:orange")):
        axes.plot(positions + shift, figure_values, "o", label=name, color=color)
    defined = np.concatenate(list(values.values()))
    low = max(0.0, float(np.nanmin(defined)) - 0.02) if np.isfinite(defined).any() else 0.0
    axes.set(xticks=DIGITS, xlabel="digit", ylim=(low, 1.005))
    axes.legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=2, frameon=False)  # Above the plot: covers nothing.
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def _ratio(value: float | None) -> str:
    """A precision or recall for the table; an undefined one (0 / 0) as a dash with the reason on hover."""
    return f"{value:.4f}" if value is not None else '<span title="0 / 0: no such example">&ndash;</span>'


def _per_class_table(result: dict) -> str:
    confusion = np.array(result["confusion_matrix"])
    rows = "".join(
        f"<tr><th>digit {d}</th><td>{_ratio(result['precision'][d])}</td><td>{_ratio(result['recall'][d])}</td>"
        f"<td>{int(confusion[d].sum()):,}</td></tr>" for d in DIGITS)
    return f"<table><tr><th></th><th>precision</th><th>recall</th><th>test examples</th></tr>{rows}</table>"


def _digit_png(image: np.ndarray) -> str:
    from matplotlib.image import imsave

    buffer = io.BytesIO()
    imsave(buffer, image, cmap="gray_r", vmin=0, vmax=255, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _errors_body(errors: list[dict], test_images: np.ndarray) -> str:
    if not errors:
        return "<p>No test digit was misclassified.</p>"
    figures = []
    for e in errors:
        caption = f"true {e['label']}, predicted {e['predicted']} ({100 * e['probability']:.1f}%)"
        figures.append(
            f'<figure class="error" data-index="{e["index"]}" data-label="{e["label"]}" '
            f'data-predicted="{e["predicted"]}" data-probability="{e["probability"]:.6f}">'
            f'<img src="{_digit_png(test_images[e["index"]])}" width="{DIGIT_PIXELS}" height="{DIGIT_PIXELS}" '
            f'alt="test image {e["index"]}: {caption}"><figcaption>#{e["index"]}<br>{caption}</figcaption></figure>')
    return ("<p>Highest predicted probability first; #N is the image's index in the test split.</p>\n"
            f'<div class="errors">{"".join(figures)}</div>')


def _histogram_figure(counts: dict[str, list[int]]) -> str:
    figure, all_axes = _figure(4.5 * len(counts), 3.2, ncols=len(counts), squeeze=False)
    for axes, (split, per_digit) in zip(all_axes[0], counts.items()):
        axes.bar(DIGITS, per_digit, color="tab:green")
        axes.set(title=f"{split} ({sum(per_digit):,} examples)", xticks=DIGITS, xlabel="digit")
        axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def _counts_table(counts: dict[str, list[int]]) -> str:
    header = "".join(f"<th>digit {d}</th>" for d in DIGITS)
    rows = "".join(f"<tr><th>{html.escape(split)}</th>{''.join(f'<td>{c:,}</td>' for c in per_digit)}</tr>"
                   for split, per_digit in counts.items())
    return f"<table><tr><th>split</th>{header}</tr>{rows}</table>"
