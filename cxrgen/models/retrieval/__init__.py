"""Image encoders as report generators: the report of the most similar study of an index (``model.backend:
retrieval``). ``encoder`` loads the encoder and its pooling rule, ``index`` builds and caches the index of a split,
``search`` finds the exact nearest neighbours and chooses among k, ``backend`` puts them behind the pipeline's
interface; ``tiny`` builds tiny random encoders for tests."""

from .backend import RetrievalBackend, build_index, download, load, locate
from .index import BuildInterrupted, Index

__all__ = ["BuildInterrupted", "Index", "RetrievalBackend", "build_index", "download", "load", "locate"]
