"""Hugging Face ``transformers`` models from a config, never weights (``hf:gpt2``, ``hf:path/to/dir``).

The config comes from ``AutoConfig.from_pretrained``: a directory holding ``config.json``, or a hub
name found in the local cache (nothing is downloaded when ``HF_HUB_OFFLINE=1``). The model class is
the config's first ``architectures`` entry when transformers has it, else ``AutoModel``; it is built
with ``from_config`` (random weights, nothing loaded). Example inputs follow ``main_input_name``:
random token ids (``seq_len`` tokens, default 128), ``decoder_input_ids`` as well for
encoder-decoders, or ``pixel_values`` of the config's image size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from inspector.errors import InputError, InspectorError, UnknownModelError, first_line
from inspector.sources import BuildOptions, ModelSpec, model_source

DEFAULT_SEQ_LEN = 128


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise InspectorError("hf: models need the transformers package: pip install transformers "
                             "(or the 'hf' extra)") from None
    return transformers


def load_config(name: str) -> Any:
    """The config of ``name``: a directory with config.json, a config.json file, or a cached hub name."""
    transformers = _transformers()
    path = Path(name)
    if path.is_file() and path.suffix == ".json":
        return transformers.AutoConfig.from_pretrained(str(path.parent)) if path.name == "config.json" \
            else transformers.PretrainedConfig.from_json_file(str(path))
    try:  # a hub name from the local cache only: never a download, never a wait on the network
        return transformers.AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        why = first_line(exc) if path.exists() else "no such directory or cached hub name"  # not the hub's internals
        raise UnknownModelError(f"no Hugging Face config for {name!r} (a directory with config.json, or a hub "
                                f"name already in the local cache): {why}") from None


def build_from_config(config: Any) -> Any:
    """The config's own architecture (``architectures[0]``) when transformers has it, else AutoModel."""
    transformers = _transformers()
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls._from_config(config)
    return transformers.AutoModel.from_config(config)


def example_inputs(model: Any, config: Any, options: BuildOptions) -> dict[str, torch.Tensor]:
    batch, device = options.batch or 1, torch.device(options.device)
    key = getattr(model, "main_input_name", "input_ids")
    if key == "pixel_values":
        size = options.shape or (batch, getattr(config, "num_channels", 3), config.image_size, config.image_size)
        return {"pixel_values": torch.randn(size, device=device)}
    if key != "input_ids":
        raise InputError(f"{type(model).__name__} takes {key!r}; pass the inputs yourself: "
                         "inspect(model, {...}) in Python")
    shape = options.shape or (batch, options.seq_len or DEFAULT_SEQ_LEN)
    vocab = getattr(config, "vocab_size", None) or 2
    inputs = {"input_ids": torch.randint(0, vocab, shape, device=device)}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = torch.randint(0, vocab, shape, device=device)
    return inputs


@model_source("hf")
class HuggingFaceSource:
    description = "Hugging Face transformers from a config (no weights): hf:path/to/dir, hf:gpt2 (cached)"

    def build(self, name: str, options: BuildOptions) -> ModelSpec:
        config = load_config(name)
        device = torch.device(options.device)
        with torch.device(device):
            model = build_from_config(config)
        model.eval()
        label = Path(name).name if Path(name).exists() else name
        return ModelSpec(name=f"hf:{label}", module=model, args=(), kwargs=example_inputs(model, config, options),
                         device=str(device))

    lists = False
    families: tuple[str, ...] = ()

    def names(self, family: str | None = None) -> list[str]:
        return []

    def catalogue(self, family: str | None = None) -> list[dict[str, Any]]:
        return []
