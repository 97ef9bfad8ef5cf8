"""Training runs: the step, the trainer, the run with its files and loop, resuming, scoring, plots."""
