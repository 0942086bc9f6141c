"""What a method is: the registry of distillation methods (registry.py), their losses
(losses.py) and the models they train (models.py). Imports nothing else of dgkd_core."""
