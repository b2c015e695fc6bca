"""The self-play loop: the iteration driver, the run directory, evaluation, status and report."""
