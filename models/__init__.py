"""The networks of the teaching post "CNN vs ANN Operations", as real ``torch.nn`` modules.

This package belongs to the repository, not to the installed library: ``inspector`` never imports
it. The command line reaches it by name, as any user's code (``models.blog:BlogANN``).
"""
from models.blog import BlogANN, BlogCNN, ConvFirstLayer, DenseFirstLayer

__all__ = ["BlogANN", "BlogCNN", "ConvFirstLayer", "DenseFirstLayer"]
