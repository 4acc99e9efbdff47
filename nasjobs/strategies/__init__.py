"""Search strategies, by name."""
from nasjobs.registry import Registry
from nasjobs.strategies.base import Observed, Outstanding, Strategy
from nasjobs.strategies.bo import BayesianOptimisation
from nasjobs.strategies.darts import DartsSearch
from nasjobs.strategies.evolution import RegularizedEvolution
from nasjobs.strategies.local_search import LocalSearch
from nasjobs.strategies.random_search import RandomSearch
from nasjobs.strategies.reinforce import Reinforce

STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "nasjobs.strategies")
STRATEGIES.register(RandomSearch.name, RandomSearch)
STRATEGIES.register(RegularizedEvolution.name, RegularizedEvolution)
STRATEGIES.register(Reinforce.name, Reinforce)
STRATEGIES.register(BayesianOptimisation.name, BayesianOptimisation)
STRATEGIES.register(LocalSearch.name, LocalSearch)
STRATEGIES.register(DartsSearch.name, DartsSearch)

__all__ = ["STRATEGIES", "Observed", "Outstanding", "Strategy", "BayesianOptimisation", "LocalSearch", "RandomSearch",
           "RegularizedEvolution", "Reinforce"]
