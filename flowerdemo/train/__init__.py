"""Training: the engine (prepare -> fit -> finish), the two trainers (full, fast) and the one
optimisation step they share, optimiser/schedule, feature cache, distributed, events, metrics,
experiments."""
