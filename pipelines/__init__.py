"""The mnist-training pipeline, its compiler, local runner and Vertex AI submitter."""
