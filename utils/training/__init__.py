"""Training an embedding model from scratch: P x K batches, mined triplet losses, the step and
the loop, checkpoints that resume exactly, logs and metadata. Open loop.py first; config.py
holds the settings of a run."""
