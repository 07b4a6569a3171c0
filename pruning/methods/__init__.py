"""Scoring methods: each decides which units to keep (`base.py` says what it is given and returns).

- `registry.py`: the methods by name (`make_method`); importing it loads torch.
- `options.py`: what a method's options are, and `registered.py` the methods every entry point offers,
  torch-free for the API process; each method's own options sit beside it (`bonsai/options.py`).

Nothing is imported here, so that the torch-free modules stay importable without torch.
"""
