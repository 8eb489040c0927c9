"""Embedding models: GME run here, a remote endpoint, and the fake embedder for tests."""
