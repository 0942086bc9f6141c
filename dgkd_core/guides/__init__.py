"""Frozen guides: final checkpoints (checkpoints.py), a guide prepared for inference
(prepared.py: BatchNorm folded, pre-cast) and guide tables of precomputed logits (logit_tables.py)."""
