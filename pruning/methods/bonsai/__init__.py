"""`bonsai` (Dery et al. 2024, "Everybody Prune Now"): forward-only, perturbative unit importance.

- `options.py`: its options and named budgets (torch-free).
- `regression.py`: the method's math (drop probabilities, antithetic sampling, the prior-shrunk ridge).
- `rounds.py`: rounds of sampling, scoring, regression and removal.
- `sub_models.py`: scoring a round's sub-models, batched per forward and shared across ranks.
- `pacing.py`: how many sub-models fit a job's time limit.
- `split_search.py`: the attention/MLP split, chosen by held-out loss after the job's refit.
- `method.py`: the method as the registry knows it.
"""
