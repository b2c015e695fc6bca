"""The script pipeline that SPIN and RLHFlow users run today, one process per stage (the peer of ``bench.iteration``).

Each file is a standalone script that imports no ``selfplay`` code: ``generate.py`` (vLLM offline
generation from a checkpoint on disk), ``score.py`` (the verifier, then SPIN pairs: the reference answer
against each sample it does not match) and ``train_dpo.py`` (TRL's ``DPOTrainer`` with precomputed
reference log-probs, then ``save_pretrained``; the next iteration's ``generate.py`` loads that directory).
Every script writes ``{"work_s": {...}}`` to ``--timings``: the seconds of its stage work proper, so the
rest of its process time (start, imports, model loading, engine start, files) shows as orchestration.
"""
