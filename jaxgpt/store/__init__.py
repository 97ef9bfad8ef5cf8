"""Where a run lives on disk: the run directory (`RunDir`) and its orbax checkpoints."""
