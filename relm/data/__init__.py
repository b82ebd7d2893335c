"""Data on disk and in batches: dictionaries, memory-mapped corpora, batching, noise."""
