"""Episodic evaluation and metrics."""
