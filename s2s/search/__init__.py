"""Hyperparameter search with Optuna: every trial is an ordinary training run (s2s.experiment.train).

    s = resolve("adapter_stage1", ["train.max_steps=60"], trials=6)   # objective.py: config + space, checked
    session = open_search(s)                # session.py: the Optuna study and the parent MLflow run
    outcome = run_trials(s, session)        # trials until the study holds s.n_trials finished ones
    summary = finish(s, session, outcome.status)   # report.py: best trial, plots; the parent run ended

Modules: space.py (search-space declarations, each strategy's default `SEARCH_SPACE`), study.py
(Optuna storage, study, pruner and sampler, recovery from dead workers), objective.py (the
resolved search and one trial), session.py (a search's life: parent run, workers, end),
report.py (the summary and Optuna's plots). The command is `python -m experiments.search`.

This file imports nothing: the strategies import `s2s.search.space` while `s2s.experiment`
(which objective.py needs) is still being imported.
"""
