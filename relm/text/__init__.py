"""Text processing: downloads, the synthetic demo pair, tokenization, BPE, vocabularies."""
