"""Training: mlm.py (masked LM) and unmt.py (denoising + back-translation) drive loop.py (the Trainer: optimizer,
iterations, epochs, evaluation bookkeeping); resume.py (run directory, a run's identity, resume checkpoints, the
run-directory lock, random states, signals), fingerprint.py (content digests of a run's inputs), devices.py (DDP
ranks, device, AMP), metrics.py (metric names, stopping criterion, ppl/acc) and schedule.py (learning rate and lambda
schedules) serve it."""
