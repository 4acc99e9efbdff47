"""Performance estimators, by name."""
from nasjobs.estimators.base import EpochHook, EvalResult, Estimator
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

__all__ = ["ESTIMATORS", "BenchmarkEstimator", "EpochHook", "EvalResult", "Estimator", "TrainEstimator"]
