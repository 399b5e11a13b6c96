"""Runs inside the training process; the only part of optwatch that imports torch."""
