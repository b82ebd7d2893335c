"""Training loops: masked LM and unsupervised NMT, with checkpoints, resume, signals, AMP and DDP."""
