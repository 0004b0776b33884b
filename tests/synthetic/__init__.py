"""Synthetic brake-disc images for tests, benchmarks and the demo."""
