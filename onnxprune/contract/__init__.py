"""The contract: an allocation turned into a checked model (``attempt.py``: re-solve, materialize,
recover, fidelity on held-out data, speed in fresh sessions), the exactness checks
(``verify.py``), and the rounds that tighten or loosen the budget until both bounds hold
(``rounds.py``)."""
