"""Scoring the variants: loading each as something to run, and timing it."""
