"""Checkpoint configurations that fairseq would run as code.

A checkpoint that passes torch's ``weights_only`` check holds plain data, but fairseq passes some
of its config values to ``eval()`` when it builds the model or the optimizer (``fairseq/utils.py``:
``eval_str_list``, ``eval_str_dict``, ``eval_bool``; plain ``eval`` in the optimizers, fconv,
wav2vec, ...): ``adaptive_softmax_cutoff = "__import__('os').system(...) or [50]"`` runs a command
in fairseq-generate. Two defences:

* at load, ``refuse_code_in_config`` rejects a checkpoint whose config gives any of
  ``EVALUATED_CONFIG_FIELDS`` a value that is not a plain literal (or calls an OmegaConf resolver),
  naming the file and the field;
* ``install_literal_only_eval`` replaces the ``eval`` that those fairseq modules call by
  ``literal_only_eval``, so that a field missing from the list, or a value reaching fairseq by
  another way, is still never run. Command-line values keep working: they are literals
  (``--adam-betas '(0.9, 0.98)'``, ``--adaptive-softmax-cutoff 10000,50000``), or list arithmetic
  such as fconv's ``--encoder-layers '[(512, 3)] * 20'``, which is allowed too.
"""
import ast
import importlib
import operator
import re
import sys
from argparse import Namespace

from .errors import CheckpointLoadError, UserInputError

# Every config field that fairseq 0.12 evaluates: the calls eval / eval_str_list / eval_str_dict /
# eval_bool on a config attribute in fairseq's sources (tests/test_checkpoint_safety.py scans them
# and fails when this list misses one).
EVALUATED_CONFIG_FIELDS = frozenset({
    "adafactor_eps", "adam_betas", "adamax_betas", "lamb_betas",  # optimizers
    "adaptive_input_cutoff", "adaptive_softmax_cutoff", "character_filters", "xformers_att_config",
    "decoder_attention", "decoder_layers", "encoder_attention", "encoder_layers", "downsample",  # lstm, fconv
    "gated_attention", "pretrained", "project_input", "self_attention",  # fconv_self_att
    "conv_aggregator_layers", "conv_feature_layers", "feature_encoder_spec",  # wav2vec, hubert, audio
    "left_pad_source", "left_pad_target",  # multilingual tasks
    "pipeline_balance", "pipeline_devices", "pipeline_encoder_balance", "pipeline_encoder_devices",
    "pipeline_decoder_balance", "pipeline_decoder_devices",  # model parallel
    "wer_args",  # ctc criterion
    # fairseq's examples/ (imported only with their own --user-dir)
    "conv_dec_config", "conv_enc_config", "decoder_zero_init", "model_overrides", "transformer_context",
    "transformer_dec_config", "transformer_enc_config", "transformer_sampling", "vggblock_enc_config",
})

# fairseq modules that call the builtin eval on config values (the same scan); fairseq.utils holds
# eval_str_list, eval_str_dict and eval_bool, which every other module imports.
MODULES_THAT_EVAL = (
    "fairseq.utils", "fairseq.optim.adam", "fairseq.optim.cpu_adam", "fairseq.optim.adamax",
    "fairseq.optim.adafactor", "fairseq.optim.fused_lamb", "fairseq.criterions.ctc", "fairseq.models.fconv",
    "fairseq.models.fconv_lm", "fairseq.models.fconv_self_att", "fairseq.models.lightconv_lm",
    "fairseq.models.transformer_lm", "fairseq.models.wav2vec.wav2vec", "fairseq.models.wav2vec.wav2vec2",
    "fairseq.models.hubert.hubert", "fairseq.models.speech_to_text.s2t_wav_transformer",
    "fairseq.data.audio.raw_audio_dataset",
    "fairseq_cli.eval_lm", "fairseq_cli.validate",  # --model-overrides
)

MAX_SOURCE_CHARS = 100_000
# The most items (numbers, strings, containers, each counted every time it appears: a list repeated
# by '*' counts as many times as it is repeated) that a literal may build. fairseq's own literals
# ('[(512, 3)] * 20', cutoffs, betas) hold a few hundred; the size is computed from the operands
# before any '+' or '*' builds its result, so '([0] * 99999,) * 9000' or a chain of '[0] * 99999 + ...'
# is refused without allocating it.
MAX_LITERAL_ITEMS = 100_000
_RESOLVER_CALL = re.compile(r"\$\{\s*[\w.\-]+\s*:")  # OmegaConf '${oc.env:NAME}', not '${common.seed}'


class NotALiteral(UserInputError, ValueError):
    """A string fairseq would evaluate is not a plain literal."""


def literal_value(source):
    """The value of ``source`` if it is a plain literal, else ``NotALiteral``.

    Plain literals are what ``ast.literal_eval`` accepts, plus ``+``, ``-``, ``*``, ``/`` between
    numbers and ``+`` / ``*`` (by an integer) on lists and tuples, building at most ``MAX_LITERAL_ITEMS``
    items in all. Nothing is looked up or called.
    """
    if isinstance(source, (bytes, bytearray)):
        source = bytes(source).decode("utf-8", errors="replace")
    if len(source) > MAX_SOURCE_CHARS:
        raise NotALiteral(f"{_shorten(source)} is {len(source)} characters long")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise NotALiteral(f"{_shorten(source)} is not a Python literal ({type(error).__name__})") from None
    try:
        value, _items = _evaluate(tree.body)
        return value
    except _TooLarge as error:
        raise NotALiteral(f"{_shorten(source)} would build {error.items} items or more "
                          f"(at most {MAX_LITERAL_ITEMS} are allowed)") from None
    except RecursionError:
        raise NotALiteral(f"{_shorten(source)} is nested too deeply") from None
    except _Code as code:
        fragment = "" if code.node is tree.body else f": {_shorten(ast.unparse(code.node), 60)} is code"
        raise NotALiteral(f"{_shorten(source)} is not a plain literal{fragment} "
                          "(fairseq would run it with eval())") from None


class _Code(Exception):
    def __init__(self, node):
        super().__init__()
        self.node = node


class _TooLarge(Exception):
    def __init__(self, items):
        super().__init__()
        self.items = items


def _counted(value, items):
    """(value, items) once ``items`` is known to be within the bound."""
    if items > MAX_LITERAL_ITEMS:
        raise _TooLarge(items)
    return value, items


_NUMBER_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_NUMBER = (int, float, complex)


def _evaluate(node):
    """(value, items): the literal's value and how many items it holds, shared ones counted each time."""
    if isinstance(node, ast.Constant) and node.value is not Ellipsis:
        return node.value, 1
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and not any(isinstance(e, ast.Starred) for e in node.elts):
        pairs = [_evaluate(element) for element in node.elts]
        container = {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)]
        return _counted(container(value for value, _ in pairs), 1 + sum(items for _, items in pairs))
    if isinstance(node, ast.Dict) and None not in node.keys:
        keys, values = [_evaluate(k) for k in node.keys], [_evaluate(v) for v in node.values]
        items = 1 + sum(n for _, n in keys) + sum(n for _, n in values)
        return _counted({k: v for (k, _), (v, _) in zip(keys, values)}, items)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand, items = _evaluate(node.operand)
        if isinstance(operand, _NUMBER):
            return (-operand if isinstance(node.op, ast.USub) else +operand), items
    if isinstance(node, ast.BinOp) and type(node.op) in _NUMBER_OPERATORS:
        (left, left_items), (right, right_items) = _evaluate(node.left), _evaluate(node.right)
        if isinstance(left, _NUMBER) and isinstance(right, _NUMBER):
            try:
                return _NUMBER_OPERATORS[type(node.op)](left, right), 1
            except ZeroDivisionError:
                raise _Code(node) from None
        if isinstance(node.op, ast.Add) and type(left) is type(right) and isinstance(left, (list, tuple)):
            _counted(None, left_items + right_items - 1)  # checked before the concatenation is built
            return left + right, left_items + right_items - 1
        if isinstance(node.op, ast.Mult):
            (sequence, items), count = ((left, left_items), right) if isinstance(right, int) else ((right, right_items), left)
            if isinstance(sequence, (list, tuple)) and isinstance(count, int) and not isinstance(count, bool):
                count = max(count, 0)
                _counted(None, 1 + (items - 1) * count)  # checked before the repetition is built
                return sequence * count, 1 + (items - 1) * count
    raise _Code(node)


def _shorten(text, limit=80):
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def literal_only_eval(source, globals=None, locals=None):  # noqa: A002  (eval's own signature)
    """Stands in for the builtin ``eval`` inside fairseq's modules: plain literals only."""
    if not isinstance(source, (str, bytes, bytearray)):
        raise TypeError(f"eval() arg 1 must be a string, bytes or code object, not {type(source).__name__}")
    return literal_value(source)


def install_literal_only_eval():
    """A module-level name ``eval`` shadows the builtin for the code of that module only."""
    for name in MODULES_THAT_EVAL:
        module = sys.modules.get(name)
        if module is None:
            try:
                module = importlib.import_module(name)
            except Exception:  # an optional dependency missing: the module cannot run either
                continue
        module.eval = literal_only_eval


def refuse_code_in_config(state, path):
    """Raises ``CheckpointLoadError`` naming ``path`` and the field when the checkpoint's ``cfg`` or ``args``
    (as torch.load returned them, before fairseq reads them) gives a field that fairseq evaluates a
    value that is not a plain literal, or calls an OmegaConf resolver (``${oc.env:...}``) anywhere."""
    if not isinstance(state, dict):
        return
    for field, value in _config_items(state):
        if isinstance(value, (str, bytes, bytearray)) and field.rsplit(".", 1)[-1] in EVALUATED_CONFIG_FIELDS:
            try:
                literal_value(value)
            except NotALiteral as error:
                raise CheckpointLoadError(
                    f"refusing to load checkpoint {path}: its config sets {field} = {error}") from None
        if isinstance(value, str) and _RESOLVER_CALL.search(value):
            raise CheckpointLoadError(
                f"refusing to load checkpoint {path}: its config sets {field} = {_shorten(value)}, "
                "an OmegaConf resolver call, which fairseq checkpoints never contain")


def _config_items(state):
    """(dotted field name, value) for every leaf under state['cfg'] and state['args'], cycles included."""
    pending = [(key, state[key]) for key in ("cfg", "args") if state.get(key) is not None]
    seen = set()
    while pending:
        name, value = pending.pop()
        if isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, (dict, list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
            children = value.items() if isinstance(value, dict) else enumerate(value)
            pending.extend((f"{name}.{key}", child) for key, child in children)
        else:
            yield name, value
