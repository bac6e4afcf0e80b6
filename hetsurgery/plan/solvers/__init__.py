"""Matching solvers: pure functions from statistics or weights to per-group merge/unmerge matrices."""
