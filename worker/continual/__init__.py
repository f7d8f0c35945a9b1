"""The continual-learning benchmark: task sequences on real data, run through the trainer's code."""
