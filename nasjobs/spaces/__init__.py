"""Search spaces, by name."""
from nasjobs.registry import Registry
from nasjobs.spaces.base import ArchParseError, Graph, SearchSpace
from nasjobs.spaces.chain_cnn import ChainCNN

SPACES: Registry[type[SearchSpace]] = Registry("search space", "nasjobs.spaces")
SPACES.register(ChainCNN.name, ChainCNN)

__all__ = ["SPACES", "ArchParseError", "Graph", "SearchSpace", "ChainCNN"]
