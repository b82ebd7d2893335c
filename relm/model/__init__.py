"""The Transformer (encoder and decoder), vocabulary extension of weights, import of XLM checkpoints."""
