"""Reference networks: the post's ANN and CNN, and any torchvision model by name."""
from models.blog import BlogANN, BlogCNN, ConvFirstLayer, DenseFirstLayer
from models.zoo import (UnknownModelError, ZooEntry, builder_kwargs, check_name, entry, example_inputs,
                        list_families, list_names, torchvision_model)

__all__ = ["BlogANN", "BlogCNN", "ConvFirstLayer", "DenseFirstLayer", "UnknownModelError", "ZooEntry",
           "builder_kwargs", "check_name", "entry", "example_inputs", "list_families", "list_names",
           "torchvision_model"]
