"""Hugging Face ``transformers`` models from a config, never weights (``hf:gpt2``, ``hf:path/to/dir``).

The config comes from ``AutoConfig.from_pretrained``: a directory holding ``config.json``, or a hub
name found in the local cache (nothing is downloaded when ``HF_HUB_OFFLINE=1``). The model class is
the one chosen (``model_class``, ``--hf-class``: any class transformers exports), else the config's
first ``architectures`` entry when transformers has it, else ``AutoModel`` (``AutoModelForCausalLM``,
or ``AutoModelForSeq2SeqLM`` for encoder-decoders, when generating); it is built with
``from_config`` (random weights, nothing loaded) and the report's notes name it. Example inputs follow ``main_input_name``:
random token ids (``seq_len`` tokens, default 128), ``decoder_input_ids`` as well for
encoder-decoders, or ``pixel_values`` of the config's image size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from inspector.errors import InputError, InspectorError, UnknownModelError, first_line
from inspector.sources import BuildOptions, ModelSpec, closest, model_source

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


#: The Auto class for a config that names no architecture: a plain forward gets the base model;
#: generation needs the head that makes logits, a causal LM's or an encoder-decoder's.
FALLBACK = {False: "AutoModel", True: "AutoModelForCausalLM"}
FALLBACK_SEQ2SEQ = "AutoModelForSeq2SeqLM"


def _class_names(transformers: Any) -> list[str]:
    """The model classes transformers exports (for the nearest names to a wrong one)."""
    return [n for n in dir(transformers) if n[:1].isupper() and (n.startswith("Auto") or n.endswith("Model")
                                                                   or "For" in n)]


def model_class(config: Any, name: str | None = None, generate: bool = False) -> tuple[Any, str]:
    """The class to build and why: ``name`` (any transformers class, ``AutoModelForCausalLM``
    included) when given, else the config's first ``architectures`` entry transformers has, else an
    Auto class (a causal LM, or a seq2seq LM for encoder-decoders, when generating)."""
    transformers = _transformers()
    if name is not None:
        cls = getattr(transformers, name, None)
        if not isinstance(cls, type) or not (hasattr(cls, "from_config") or hasattr(cls, "_from_config")):
            raise closest(name, _class_names(transformers), "transformers model class")
        return cls, "chosen"
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type):
            return cls, "the config's architectures"
    auto = FALLBACK_SEQ2SEQ if generate and getattr(config, "is_encoder_decoder", False) else FALLBACK[generate]
    return getattr(transformers, auto), "no architecture in the config"


def build_from_config(config: Any, name: str | None = None, generate: bool = False) -> tuple[Any, str]:
    """The model (random weights, nothing loaded) and a note naming the class built and why."""
    cls, why = model_class(config, name, generate)
    try:
        model = cls.from_config(config) if cls.__name__.startswith("Auto") else cls._from_config(config)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"transformers' {cls.__name__} cannot be built from this config "
                         f"({type(config).__name__}): {first_line(exc)}") from None
    built = type(model).__name__
    via = f" through {cls.__name__}" if cls.__name__ != built else ""
    return model, f"built {built}{via} ({why}; another with --hf-class NAME, model_class= in load())"


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
    inputs: dict[str, Any] = {"input_ids": torch.randint(0, vocab, shape, device=device)}
    if getattr(config, "is_encoder_decoder", False):
        # generating, the decoder starts from its start token (as generate() does); else as long as the input
        length = 1 if options.generate is not None else shape[-1]
        start = getattr(config, "decoder_start_token_id", None) or 0
        inputs["decoder_input_ids"] = torch.randint(0, vocab, (shape[0], length), device=device) \
            if options.generate is None else torch.full((shape[0], 1), start, device=device)
    if options.last_logits:
        inputs["logits_to_keep"] = 1
    return inputs


@model_source("hf")
class HuggingFaceSource:
    description = "Hugging Face transformers from a config (no weights): hf:path/to/dir, hf:gpt2 (cached)"

    def build(self, name: str, options: BuildOptions) -> ModelSpec:
        config = load_config(name)
        device = torch.device(options.device)
        with torch.device(device):
            model, note = build_from_config(config, options.model_class, options.generate is not None)
        model.eval()
        label = Path(name).name if Path(name).exists() else name
        return ModelSpec(name=f"hf:{label}", module=model, args=(), kwargs=example_inputs(model, config, options),
                         device=str(device), notes=(note,))

    lists = False
    families: tuple[str, ...] = ()

    def names(self, family: str | None = None) -> list[str]:
        return []

    def catalogue(self, family: str | None = None) -> list[dict[str, Any]]:
        return []
