"""Writes flower_reference.json: Flower's own aggregation functions and server optimisers run on seeded inputs.

The coordinator's test `flower_parity` checks `pdc_coordinator::aggregation` against these outputs. Regenerate
(the file records the versions used) with:

    python3 -m venv /tmp/flwr && /tmp/flwr/bin/pip install flwr==1.42.0 numpy
    /tmp/flwr/bin/python coordinator/tests/data/flower_reference.py > coordinator/tests/data/flower_reference.json

Inputs are float32 values, widened to float64 for Flower, which then computes in float64; the file holds them as
the shortest decimals that read back as those float32 values, and the outputs as float64.
"""

import json
import sys

import flwr
import numpy as np
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi
from flwr.server.strategy import aggregate as agg

RNG = np.random.default_rng(20261203)


def f32(shape, scale=1.0):
    """Seeded normal values that float32 represents exactly, as float64."""
    return exact(RNG.standard_normal(shape) * scale)


def exact(array):
    """`array` rounded to float32 values, as float64."""
    return array.astype(np.float32).astype(np.float64)


def weights(n):
    return [int(w) for w in RNG.integers(5, 200, size=n)]


def results(updates, counts):
    return [([u.copy()], c) for u, c in zip(updates, counts)]


def rule_cases():
    cases = []
    for n, d in [(5, 7), (8, 13)]:
        u, w = f32((n, d)), weights(n)
        cases.append({"rule": "fedavg", "updates": u, "weights": w, "expected": agg.aggregate(results(u, w))[0]})
    for n, d in [(5, 7), (6, 9)]:  # odd and even n
        u, w = f32((n, d)), weights(n)
        cases.append({"rule": "median", "updates": u, "weights": w,
                      "expected": agg.aggregate_median(results(u, w))[0]})
    # beta * n an integer (0.2 * 10), and not (0.25 * 6 = 1.5, 0.3 * 7 = 2.1)
    for n, d, beta in [(10, 11, 0.2), (6, 9, 0.25), (7, 5, 0.3)]:
        u, w = f32((n, d)), weights(n)
        cases.append({"rule": "trimmed_mean", "beta": beta, "updates": u, "weights": w,
                      "expected": agg.aggregate_trimmed_avg(results(u, w), beta)[0]})
    for n, d, f in [(7, 6, 2), (10, 12, 2), (20, 8, 4)]:
        u, w = f32((n, d)), weights(n)
        u[n - 1] = exact(u[n - 1] + 8.0)  # an outlier the rule must not pick
        cases.append({"rule": "krum", "f": f, "updates": u, "weights": w,
                      "expected": agg.aggregate_krum(results(u, w), f, 0)[0]})
    for n, d, f, m in [(7, 6, 2, 3), (10, 12, 2, 8), (20, 8, 4, 16)]:
        u, w = f32((n, d)), weights(n)
        u[0] = exact(u[0] - 6.0)
        cases.append({"rule": "multi_krum", "f": f, "m": m, "updates": u, "weights": w,
                      "expected": agg.aggregate_krum(results(u, w), f, m)[0]})
    for n, d, f in [(11, 9, 2), (12, 7, 2), (20, 10, 4)]:
        u, w = f32((n, d)), weights(n)
        u[2] = exact(u[2] * 10.0)
        cases.append({"rule": "bulyan", "f": f, "updates": u, "weights": w,
                      "expected": agg.aggregate_bulyan(results(u, w), f, agg.aggregate_krum, to_keep=0)[0]})
    return cases


def optimizer_case(name, strategy_for, params, n=4, d=10, rounds=4):
    """Runs Flower's strategy for `rounds` rounds; each round every client sends the current model plus a delta."""
    initial = f32(d)
    strategy = strategy_for(ndarrays_to_parameters([initial.copy()]))
    current = initial.copy()
    recorded = []
    for server_round in range(1, rounds + 1):
        deltas, counts = f32((n, d), scale=0.1), weights(n)
        fit = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([current + delta]), count, {}))
               for delta, count in zip(deltas, counts)]
        parameters, _ = strategy.aggregate_fit(server_round, fit, [])
        current = parameters_to_ndarrays(parameters)[0]
        recorded.append({"deltas": deltas, "weights": counts, "expected": current.copy()})
    return {"optimizer": name, **params, "initial": initial, "rounds": recorded}


def optimizer_cases():
    lr, momentum = 0.7, 0.9
    eta, eta_yogi, b1, b2, tau, tau_yogi = 0.1, 0.05, 0.9, 0.99, 1e-3, 1e-3
    return [
        optimizer_case("fedavgm", lambda p: FedAvgM(initial_parameters=p, server_learning_rate=lr,
                                                     server_momentum=momentum),
                       {"learning_rate": lr, "momentum": momentum}),
        optimizer_case("fedadam", lambda p: FedAdam(initial_parameters=p, eta=eta, beta_1=b1, beta_2=b2, tau=tau),
                       {"learning_rate": eta, "beta_1": b1, "beta_2": b2, "tau": tau}),
        optimizer_case("fedyogi", lambda p: FedYogi(initial_parameters=p, eta=eta_yogi, beta_1=b1, beta_2=b2,
                                                    tau=tau_yogi),
                       {"learning_rate": eta_yogi, "beta_1": b1, "beta_2": b2, "tau": tau_yogi}),
        optimizer_case("fedadagrad", lambda p: FedAdagrad(initial_parameters=p, eta=eta, tau=tau),
                       {"learning_rate": eta, "tau": tau}),
    ]


INPUTS = {"updates", "deltas", "initial"}


def plain(value, key=None):
    """JSON values; inputs as the shortest decimals that read back as their float32 values."""
    if isinstance(value, np.ndarray) and key in INPUTS:
        return [plain(row, key) for row in value] if value.ndim > 1 else [float(str(np.float32(v))) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


json.dump(plain({"flwr": flwr.__version__, "numpy": np.__version__, "rules": rule_cases(),
                 "optimizers": optimizer_cases()}), sys.stdout, indent=1)
sys.stdout.write("\n")
