"""Opening a local HTML file in Debian's headless chromium (selenium, chromedriver); checking the run's report."""

import json
import os
import shutil
import tempfile

import numpy as np

from tests import conftest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# No GPU, no sandbox (root in CI), and none of the browser's own traffic
# (updates, sync, safe browsing), so that every request recorded is the page's.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
         "--disable-extensions", "--window-size=1280,1000")

# What the page says about itself once every image has settled.
_INSPECT = """
const done = arguments[arguments.length - 1];
const settle = () => Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)));
settle().then(() => done({
  text: document.body.innerText,
  images: Array.from(document.images).map(i => ({src: i.src.slice(0, 40), width: i.naturalWidth})),
  errors: Array.from(document.querySelectorAll('figure.error')).map(f => ({
    index: Number(f.dataset.index), label: Number(f.dataset.label), predicted: Number(f.dataset.predicted),
    probability: Number(f.dataset.probability)})),
  height: document.documentElement.scrollHeight,
}));
"""


def require_chromium() -> None:
    """Fails in CI and skips elsewhere (saying why) when chromium or chromedriver is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        conftest.missing(f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver (.ci/run does)")


def open_page(path: str, screenshot: str) -> dict:
    """Loads `path` as a file:// URL, saves a full-page PNG to `screenshot` and returns what the page held.

    Returns:
      text (the page's visible text), images (src prefix and naturalWidth of
      each <img>), errors (the data- attributes of each misclassified-digit
      figure), and requests: every URL the page asked the network stack for,
      from chromium's own DevTools Network events (data: URIs included),
      starting with the page's own file:// URL.
    """
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    url = "file://" + os.path.abspath(path)
    profile = tempfile.mkdtemp(prefix="mnistkit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # An explicit driver path: selenium-manager never runs, so nothing is downloaded.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_script_timeout(30)
        driver.get(url)
        seen = driver.execute_async_script(_INSPECT)
        driver.set_window_size(1280, min(int(seen["height"]) + 300, 8000))  # Taller than the page: all of it.
        driver.save_screenshot(screenshot)
        events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    requested = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    # The browser's start page (chrome:// resources) loads first; the page's requests begin with its own file.
    seen["requests"] = requested[requested.index(url):]
    return seen


def assert_report_shows_the_run(path: str, model_dir: str, data_dir: str, screenshot: str) -> dict:
    """Opens the report at `path` in chromium and checks it against the model and data it is about.

    Every image loads from the page itself (no request but the file and data:
    URIs), the text names every digit class, a screenshot is written, and the
    misclassified grid lists the test images that the model, run again here,
    gets wrong with the highest probability, with their true and predicted
    labels. Returns what the page held (open_page).
    """
    import tensorflow as tf

    from mnistkit import idx, training
    from mnistkit.model import for_inference

    seen = open_page(path, screenshot)
    with open(screenshot, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(header[16:20], "big") >= 1000, screenshot
    assert seen["requests"][0] == "file://" + os.path.abspath(path)
    assert [r for r in seen["requests"][1:] if not r.startswith("data:")] == []
    # Four figures (history, confusion matrix, per-class, histogram) and one picture per misclassified digit.
    assert len(seen["images"]) == 4 + len(seen["errors"])
    assert [i for i in seen["images"] if i["width"] <= 0] == []
    for digit in range(idx.NUM_CLASSES):
        assert f"digit {digit}" in seen["text"], f"the page does not name digit {digit}"
    for heading in ("Test accuracy and loss after each evaluation", "Confusion matrix", "Precision and recall",
                    "Most confidently misclassified test digits", "Examples per digit in the data"):
        assert heading in seen["text"]

    # The model's own predictions, computed here independently of the report.
    images, labels = idx.load_split(data_dir, idx.TEST)
    model = for_inference(training.load_model(model_dir))
    probabilities = tf.nn.softmax(model(images.astype(np.float32) / 255.0, training=False)).numpy()
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = set(np.flatnonzero(predicted != labels).tolist())
    shown = seen["errors"]
    assert wrong, "the model under test must misclassify some digits for this check to mean anything"
    assert len(shown) == min(16, len(wrong))
    for e in shown:
        i = e["index"]
        assert i in wrong, f"test image {i} is shown as misclassified but the model gets it right"
        assert (e["label"], e["predicted"]) == (labels[i], predicted[i])
        assert abs(e["probability"] - confidence[i]) < 1e-3
    assert [e["probability"] for e in shown] == sorted((e["probability"] for e in shown), reverse=True)
    # None left out was predicted more confidently than the least confident one shown.
    left_out = wrong - {e["index"] for e in shown}
    assert all(confidence[i] <= shown[-1]["probability"] + 1e-3 for i in left_out)
    return seen
