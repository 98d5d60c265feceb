"""Training and evaluation for the `train` step: linear probe, fine-tuning, scoring with intervals."""
