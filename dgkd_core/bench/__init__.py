"""Benchmarks: the training step (step.py), fused training (fused.py) and the ImageNet
stream path (stream.py)."""
