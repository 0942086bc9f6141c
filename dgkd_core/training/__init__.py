"""Training one model, or a fused group of them: the trainer (trainer.py: setup, epochs,
outputs), its step (step.py), the Distiller (distiller.py), fused training (fused.py),
data-parallel ranks (distributed.py, launch.py, sync_batchnorm.py), resume state (resume.py),
the per-epoch history (history.py, tensorboard_log.py) and evaluation (evaluate.py)."""
