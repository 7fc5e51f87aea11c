"""mnistkit: the official/r1/mnist CNN as a library for pipelines on Vertex AI.

The package holds all the work (data, model, training, evaluation, export) and
never imports kfp; its commands live in `mnistkit.commands`. Importing it is
cheap and changes nothing: TensorFlow is only loaded by the modules that need
it, and the entry points apply the project's TensorFlow settings
(`tf_settings.apply()`) before it loads.
"""

__version__ = "0.1.0"
