"""Search strategies, by name."""
from nasjobs.registry import Registry
from nasjobs.strategies.base import Strategy
from nasjobs.strategies.random_search import RandomSearch

STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "nasjobs.strategies")
STRATEGIES.register(RandomSearch.name, RandomSearch)

__all__ = ["STRATEGIES", "Strategy", "RandomSearch"]
