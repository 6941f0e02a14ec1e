"""How many trials parameter importances need: the evidence behind study.importance.MIN_IMPORTANCE_TRIALS.

    python benchmarks/importance_trials.py [--studies 20]

Simulates studies of this project's search space (momentum's complement on a log scale, batch size,
dropout, depth) in which only momentum matters (val accuracy peaks at momentum 0.97) plus noise of
about a quarter of momentum's effect, and prints, for each number of trials, how often fANOVA (the
report's evaluator) and PED-ANOVA (optuna-dashboard's) rank momentum first.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution

SPACE = {"one_minus_bn_momentum_permille": IntDistribution(1, 500, log=True),
         "batch_size": CategoricalDistribution([8, 16, 32, 64, 128, 256]),
         "dropout_percent": IntDistribution(0, 50), "depth": IntDistribution(2, 4)}


def simulated_study(n: int, rng: np.random.Generator) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for _ in range(n):
        params = {"one_minus_bn_momentum_permille": int(np.exp(rng.uniform(0, np.log(500)))),
                  "batch_size": int(rng.choice([8, 16, 32, 64, 128, 256])),
                  "dropout_percent": int(rng.integers(0, 51)), "depth": int(rng.integers(2, 5))}
        value = -abs(np.log10(params["one_minus_bn_momentum_permille"]) - 1.5) + 0.4 * rng.normal()
        study.add_trial(optuna.trial.create_trial(params=params, distributions=SPACE, value=float(value)))
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20, help="simulated studies per number of trials")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    print("trials  fANOVA ranks momentum first  PED-ANOVA ranks momentum first")
    for n in (4, 6, 8, 10, 12, 16, 24, 32):
        hits = {"fanova": 0, "ped": 0}
        for _ in range(args.studies):
            study = simulated_study(n, rng)
            fanova = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
            ped = optuna.importance.get_param_importances(
                study, target=lambda t: -t.value, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
            hits["fanova"] += max(fanova, key=fanova.get) == "one_minus_bn_momentum_permille"
            hits["ped"] += bool(ped) and max(ped, key=ped.get) == "one_minus_bn_momentum_permille"
        print(f"{n:6d}  {hits['fanova'] / args.studies:27.0%}  {hits['ped'] / args.studies:30.0%}", flush=True)


if __name__ == "__main__":
    main()
