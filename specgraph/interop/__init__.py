"""Adapters that let specgraph serve other graph libraries' objects as they are.

``nnx`` (Flax NNX 0.12+) and ``brainstate`` (BrainState 0.5+) each describe their
library's node classes (dict-backed, with invisible bookkeeping) and state classes
(raw value, metadata, how to make one) to the registry. They are imported lazily,
by the registry, the first time an object of that library is classified, so
``import specgraph`` imports neither library.
"""
