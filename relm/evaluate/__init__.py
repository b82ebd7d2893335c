"""Scoring (sacreBLEU, tokenized BLEU, bootstrap), results tables and plots."""
