"""Evaluation of finished runs (logits, errors, per-class analysis); see classification.py."""
