"""What an unpickled checkpoint must hold before fairseq reads it, and why its weights do not fit a model.

torch's ``weights_only`` unpickler guarantees plain data, not sensible data. fairseq trusts what it
reads: the config sizes the model before a single weight is compared (``decoder_layers = 10**6``
builds a million layers, ``max_source_positions = 10**12`` asks for a 4 TB sinusoidal table), and a
missing or odd ``cfg`` or a vocabulary of another size end in a traceback. Three checks:

* ``refuse_odd_structure``: a dict with ``model`` weights and a config (``cfg`` dict or legacy ``args``);
* ``refuse_unbuildable_model``: every size field of the model config (``*_layers``, ``*_heads``,
  ``*_dim``, ``*_positions``) within ``SIZE_BOUNDS``, and the layer counts and embedding widths equal
  to those of the weights the file stores;
* ``explain_mismatch``: once a model is built (from the command line, or with another dictionary),
  the one line that says why the checkpoint's weights do not fit it.
"""
import re
from argparse import Namespace

import torch

from .errors import CheckpointLoadError

# Field-name suffix -> the largest value accepted. Larger than any published fairseq model (the
# widest are 12288 wide, the deepest 96 layers, positions up to 16384), small enough that building
# the model the config describes cannot exhaust a machine before the weights are compared.
SIZE_BOUNDS = {"_layers": 1_000, "_heads": 1_024, "_dim": 65_536, "_positions": 65_536}

# (config field, key of a stored tensor, axis): the field must equal that tensor's size on that axis.
_WIDTHS = [(f"{side}_embed_dim", f"{side}.embed_tokens.weight", 1) for side in ("encoder", "decoder")] + [
    (f"{side}_ffn_embed_dim", f"{side}.layers.0.fc1.weight", 0) for side in ("encoder", "decoder")]
_VOCABULARY_KEYS = ("embed_tokens.weight", "output_projection.weight")


def refuse_odd_structure(state, path):
    """Raises ``CheckpointLoadError`` unless ``state`` looks like what fairseq-train saves."""
    def refuse(why):
        raise CheckpointLoadError(f"checkpoint {path} is not a fairseq checkpoint: {why}")

    if not isinstance(state, dict):
        refuse(f"it holds a {type(state).__name__}, not a dict with model weights and a config")
    model = state.get("model")
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        refuse("its 'model' entry is missing or is not a dict of tensors")
    cfg, args = state.get("cfg"), state.get("args")
    if cfg is None and args is None:
        refuse("it has no config (neither 'cfg' nor 'args')")
    if cfg is not None:
        if not isinstance(cfg, dict):
            refuse(f"its 'cfg' is a {type(cfg).__name__}, not a dict")
        if not isinstance(cfg.get("model"), (dict, Namespace)):
            refuse(f"its cfg has no model section (cfg.model is {type(cfg.get('model')).__name__})")
        odd = [name for name, section in cfg.items() if not isinstance(section, (dict, Namespace, type(None)))]
        if odd:
            refuse(f"its cfg.{odd[0]} is a {type(cfg[odd[0]]).__name__}, not a config section")
    elif not isinstance(args, Namespace):
        refuse(f"its 'args' is a {type(args).__name__}, not an argparse.Namespace")


def refuse_unbuildable_model(state, path):
    """Raises ``CheckpointLoadError`` naming the field when the model config exceeds ``SIZE_BOUNDS``
    or disagrees with the weights stored beside it. Call after ``refuse_odd_structure``."""
    cfg = state.get("cfg")
    prefix, fields = ("cfg.model", cfg["model"]) if cfg is not None else ("args", state["args"])
    fields = vars(fields) if isinstance(fields, Namespace) else fields
    weights = state["model"]

    def refuse(field, why):
        raise CheckpointLoadError(
            f"refusing to load checkpoint {path}: its config sets {prefix}.{field} = {fields[field]!r}, {why}")

    for field, value in fields.items():
        if not isinstance(field, str) or not isinstance(value, int) or isinstance(value, bool):
            continue
        for suffix, bound in SIZE_BOUNDS.items():
            if field.endswith(suffix) and not 0 <= value <= bound:
                refuse(field, f"outside 0..{bound}, the bound on {suffix[1:]}")
    for side in ("encoder", "decoder"):
        field, value = f"{side}_layers", fields.get(f"{side}_layers")
        if isinstance(value, int) and not isinstance(value, bool) and not fields.get(f"{side}_layers_to_keep"):
            stored = {int(m.group(1)) for key in weights if (m := re.match(rf"{side}\.layers\.(\d+)\.", key))}
            if stored and value != len(stored):
                refuse(field, f"but the file holds the weights of {len(stored)} {side} layer(s)")
    for field, key, axis in _WIDTHS:
        value, tensor = fields.get(field), weights.get(key)
        if isinstance(value, int) and tensor is not None and tensor.dim() == 2 and tensor.shape[axis] != value:
            refuse(field, f"but the file's {key} is {tensor.shape[axis]} wide")


def explain_mismatch(model, state_dict):
    """Why ``state_dict`` does not load into ``model`` (the vocabulary, or the parameters that differ),
    as the end of a sentence starting with the checkpoint; None when nothing differs."""
    own = model.state_dict()
    for key, tensor in state_dict.items():
        if key not in own or not isinstance(tensor, torch.Tensor) or own[key].shape == tensor.shape:
            continue
        if key.endswith(_VOCABULARY_KEYS) and tensor.dim() == 2 and tensor.shape[1:] == own[key].shape[1:]:
            side = "source" if key.startswith("encoder.") else "target"
            return (f"was trained with a vocabulary of {tensor.shape[0]}, the {side} dictionary has "
                    f"{own[key].shape[0]} ({key}): is it the dictionary of the corpus it was trained on?")
        return (f"has {key} of shape {tuple(tensor.shape)}, the model built for it {tuple(own[key].shape)}: "
                "were the model flags the same as in training?")
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if not missing and not unexpected:
        return None
    parts = [f"lacks {len(missing)} parameter(s) of the model (e.g. {missing[0]})" if missing else "",
             f"has {len(unexpected)} the model lacks (e.g. {unexpected[0]})" if unexpected else ""]
    return f"{' and '.join(p for p in parts if p)}: was it trained with another architecture?"
