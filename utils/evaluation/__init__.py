"""Measuring embeddings: LFW verification protocols and their metrics, the dlib ResNet reference,
and the benchmark-face t-SNE figures. Open verification.py first, then metrics.py."""
