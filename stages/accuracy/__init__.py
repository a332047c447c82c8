"""Accuracy against PyTorch, as a library: the parity cell, the PyTorch reference on the sample photos and
prompts, one cell's evaluation on a target, and the failure table. The parity and target_parity stages call it."""
