"""mnistkit: the official/r1/mnist CNN as a library for pipelines on Vertex AI.

The package holds all the work (data, model, training, evaluation, export) and
never imports kfp. Importing it is cheap: TensorFlow is only loaded by the
modules that need it.
"""

__version__ = "0.1.0"
