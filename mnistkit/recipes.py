"""The training recipes: complete sets of the hyperparameters that matter.

Kept apart from training.py so that the pipeline can take its defaults from
here without loading TensorFlow.
"""

# 'seed' is the tensorflow/models r1 setting (Adam 1e-4, batch 100, 40 epochs, float32);
# 'fast' reaches the seed's accuracy in a few epochs (see the README's
# performance section for the figures). The first is the default.
RECIPES = {
    # Batch 128 at 3e-3 with a short warmup: in bfloat16 it costs less CPU per example than batch 64 and
    # its first epoch learns as much. What was screened, and each seed's accuracy, are in the README's
    # Performance section and benchmarks/results.md (`python -m benchmarks --sections recipe`).
    "fast": dict(batch_size=128, train_epochs=3, learning_rate=3e-3, schedule="epoch_cosine",
                 warmup_epochs=0.05, precision="auto"),
    "seed": dict(batch_size=100, train_epochs=40, learning_rate=1e-4, schedule="constant",
                 warmup_epochs=0.0, precision="float32"),
}

SCHEDULES = ("constant", "cosine", "epoch_cosine")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
