"""Experiments: typed configs, the ``longrec`` CLI, run folders, W&B logging, sweeps and comparisons.

Modelled on CleanRL's experiment hygiene (typed args, ``env__exp__seed__time`` run
names, W&B tracking) and W&B's own sweep format; see ``docs/architecture.md``.
"""
