"""Performance estimators, by name."""
from nasjobs.estimators.base import EpochHook, EvalResult, Estimator, Figure
from nasjobs.estimators.benchmark import BenchmarkEstimator
from nasjobs.estimators.low_fidelity import LowFidelityEstimator
from nasjobs.estimators.median_stopping import MedianStoppingEstimator
from nasjobs.estimators.successive_halving import HyperbandEstimator, SuccessiveHalvingEstimator
from nasjobs.estimators.train import TrainEstimator
from nasjobs.estimators.weight_sharing import WeightSharingEstimator
from nasjobs.estimators.zero_cost import ZeroCostEstimator
from nasjobs.registry import Registry

ESTIMATORS: Registry[type[Estimator]] = Registry("estimator", "nasjobs.estimators")
ESTIMATORS.register(TrainEstimator.name, TrainEstimator)
ESTIMATORS.register(BenchmarkEstimator.name, BenchmarkEstimator)
ESTIMATORS.register(LowFidelityEstimator.name, LowFidelityEstimator)
ESTIMATORS.register(MedianStoppingEstimator.name, MedianStoppingEstimator)
ESTIMATORS.register(ZeroCostEstimator.name, ZeroCostEstimator)
ESTIMATORS.register(WeightSharingEstimator.name, WeightSharingEstimator)
ESTIMATORS.register(SuccessiveHalvingEstimator.name, SuccessiveHalvingEstimator)
ESTIMATORS.register(HyperbandEstimator.name, HyperbandEstimator)

__all__ = ["ESTIMATORS", "BenchmarkEstimator", "EpochHook", "EvalResult", "Estimator", "Figure", "TrainEstimator"]


def estimator_figure(name: str, options: dict | None = None) -> Figure:
    """What an experiment's figure is, from its estimator's name and options (the defaults where the options are
    not at hand: the kind, accuracy or score, does not depend on them)."""
    from nasjobs.estimators.base import ACCURACY
    from nasjobs.options import OptionError, parse_config

    if name not in ESTIMATORS:
        return ACCURACY
    cls = ESTIMATORS.get(name)
    try:
        config = parse_config(cls.Config, options or {})
    except OptionError:
        config = parse_config(cls.Config, {})
    return cls.figure(config)
