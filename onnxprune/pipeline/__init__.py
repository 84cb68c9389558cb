"""The stages strung together: the one analysis every command shares (``analyse.py``), the
stages after it (``stages.py``), the prune run (``prune.py``) and its report (``result.py``),
and plans: saved (``plan.py``) and replayed without timing (``replay.py``)."""
