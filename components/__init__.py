"""The pipeline's KFP components: one thin lightweight Python component per step.

Each step is a plain function (in data.py, model.py, registry.py) whose body
imports mnistkit and makes one library call; `component()` turns it into a
KFP component that runs in the image `images.image_uri(kind)` names. The
images hold mnistkit and the kfp version that compiled the pipeline, so
nothing is pip-installed when a step starts (`install_kfp_package=False`).
"""

from __future__ import annotations

from typing import Callable

from kfp import dsl

from components import images


def component(func: Callable, kind: str = "cpu", registry: str | None = None,
              tag: str | None = None) -> dsl.base_component.BaseComponent:
    """Returns `func` as a KFP lightweight Python component in the `kind` image."""
    return dsl.component(func, base_image=images.image_uri(kind, registry, tag), install_kfp_package=False)
