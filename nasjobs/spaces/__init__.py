"""Search spaces, by name."""
from nasjobs.registry import Registry
from nasjobs.spaces.base import ArchParseError, Graph, OpGraph, SearchSpace
from nasjobs.spaces.chain_cnn import ChainCNN
from nasjobs.spaces.darts import Darts
from nasjobs.spaces.mlp import MLP
from nasjobs.spaces.nb201 import NB201

SPACES: Registry[type[SearchSpace]] = Registry("search space", "nasjobs.spaces")
SPACES.register(ChainCNN.name, ChainCNN)
SPACES.register(Darts.name, Darts)
SPACES.register(MLP.name, MLP)
SPACES.register(NB201.name, NB201)

__all__ = ["SPACES", "ArchParseError", "Graph", "OpGraph", "SearchSpace", "ChainCNN", "MLP", "NB201"]
