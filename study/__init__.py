"""Orchestration around gaplab: the Optuna search space, the objective, MLflow tracking, CLIs.

    python -m study.run --trials 50        # or: mlflow run . -P trials=50
    python -m study.report                 # which settings close the gap, and why
"""
