"""The formulas: parameters, weights per format, KV cache, activations, optimizer state.

Every function here is plain arithmetic on a :class:`~profiler.predict.modelshape.ModelShape`
and returns ``int`` bytes. Activation formulas list the tensors a decoder block keeps for
backward (or holds at the prefill peak) one by one, so they can be rounded per tensor the way the
CUDA caching allocator rounds them, and so a gap against a measurement points at a tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from profiler.predict.formats import (
    WeightFormat,
    embedding_bytes,
    matrix_bytes,
    small_bytes,
)
from profiler.predict.modelshape import ModelShape

__all__ = [
    "Matrix",
    "activation_bytes_for_module",
    "checkpoint_recompute_bytes",
    "inference_activation_bytes",
    "is_checkpointing",
    "kv_cache_bytes",
    "kv_cache_bytes_per_token",
    "linear_matrices",
    "lora_parameter_count",
    "lora_target_count",
    "optimizer_state_bytes_per_param",
    "parameter_count",
    "small_parameter_count",
    "training_activation_bytes",
    "weight_bytes",
]


@dataclass(frozen=True, slots=True)
class Matrix:
    """One kind of linear weight matrix in a block, ``count`` of them per layer (experts)."""

    role: str
    in_features: int
    out_features: int
    count: int = 1


def linear_matrices(shape: ModelShape) -> tuple[Matrix, ...]:
    """The weight matrices of one decoder block, named after GGUF's tensor roles."""
    h, q, kv, inter = shape.hidden_size, shape.q_dim, shape.kv_dim, shape.intermediate_size
    experts = max(shape.num_experts, 1)
    attn = (
        Matrix("attn_q", h, q),
        Matrix("attn_k", h, kv),
        Matrix("attn_v", h, kv),
        Matrix("attn_output", q, h),
    )
    mlp: tuple[Matrix, ...]
    if shape.gated_mlp:
        mlp = (
            Matrix("ffn_gate", h, inter, experts),
            Matrix("ffn_up", h, inter, experts),
            Matrix("ffn_down", inter, h, experts),
        )
    else:
        mlp = (Matrix("ffn_up", h, inter, experts), Matrix("ffn_down", inter, h, experts))
    return attn + mlp


def small_parameter_count(shape: ModelShape) -> int:
    """Parameters outside the block matrices and embeddings: norms, biases, MoE routers."""
    h = shape.hidden_size
    norm = 2 * h if shape.layer_norm_bias else h
    per_layer = shape.norms_per_layer * norm
    if shape.attention_bias:
        per_layer += shape.q_dim + 2 * shape.kv_dim
    if shape.o_bias:
        per_layer += h
    if shape.mlp_bias:
        experts = max(shape.num_experts, 1)
        per_layer += experts * ((2 if shape.gated_mlp else 1) * shape.intermediate_size + h)
    if shape.num_experts:
        per_layer += h * shape.num_experts
    return shape.num_layers * per_layer + norm


def _embedding_rows(shape: ModelShape) -> int:
    rows = shape.vocab_size
    if shape.learned_positions and shape.max_positions:
        rows += shape.max_positions
    return rows


def parameter_count(shape: ModelShape) -> int:
    """All parameters, tied embeddings counted once."""
    matrices = sum(m.in_features * m.out_features * m.count for m in linear_matrices(shape))
    head = 0 if shape.tie_word_embeddings else shape.vocab_size * shape.hidden_size
    return (
        _embedding_rows(shape) * shape.hidden_size
        + shape.num_layers * matrices
        + head
        + small_parameter_count(shape)
    )


def weight_bytes(shape: ModelShape, fmt: WeightFormat) -> int:
    """Bytes of all weights stored in ``fmt``: block matrices quantised, the rest as it keeps."""
    if fmt.kind in ("dense", "flat"):
        return int(parameter_count(shape) * fmt.bytes_per_param)
    total = embedding_bytes(fmt, _embedding_rows(shape), shape.hidden_size)
    for layer in range(shape.num_layers):
        for m in linear_matrices(shape):
            one = matrix_bytes(
                fmt,
                m.in_features,
                m.out_features,
                # llama.cpp names expert tensors ffn_*_exps; its _M mixes leave them alone
                role=m.role if m.count == 1 else f"{m.role}_exps",
                layer=layer,
                layers=shape.num_layers,
            )
            total += one * m.count
    if not shape.tie_word_embeddings:
        if fmt.kind == "gguf":
            total += matrix_bytes(fmt, shape.hidden_size, shape.vocab_size, role="output")
        else:
            total += shape.vocab_size * shape.hidden_size * fmt.keep_bytes
    return total + small_bytes(fmt, small_parameter_count(shape))


_LORA_TARGETS = {
    "all-linear": None,
    "attention": ("attn_q", "attn_k", "attn_v", "attn_output"),
    "qv": ("attn_q", "attn_v"),
}


def lora_parameter_count(shape: ModelShape, rank: int, targets: str = "all-linear") -> int:
    """Adapter parameters: ``rank × (in + out)`` for each targeted matrix (experts included)."""
    if targets not in _LORA_TARGETS:
        from profiler.errors import UnknownNameError

        raise UnknownNameError("LoRA target set", targets, list(_LORA_TARGETS))
    roles = _LORA_TARGETS[targets]
    per_layer = sum(
        rank * (m.in_features + m.out_features) * m.count
        for m in linear_matrices(shape)
        if roles is None or m.role in roles
    )
    return shape.num_layers * per_layer


def lora_target_count(shape: ModelShape, targets: str = "all-linear") -> int:
    """How many matrices per block carry an adapter (experts counted one by one)."""
    roles = _LORA_TARGETS.get(targets)
    return sum(m.count for m in linear_matrices(shape) if roles is None or m.role in roles)


def kv_cache_bytes_per_token(shape: ModelShape, dtype_bytes: int = 2) -> int:
    """KV bytes one token adds to a full-attention cache: 2 × layers × kv_heads × head_dim × bytes."""
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * dtype_bytes


def kv_cache_bytes(shape: ModelShape, *, tokens: int, batch: int = 1, dtype_bytes: int = 2) -> int:
    """KV cache bytes: 2 × kv_heads × head_dim × tokens × batch × bytes summed over layers.

    Grouped-query and multi-query attention count only the KV heads; a sliding-window layer holds
    at most ``window`` tokens; per-layer patterns (Gemma 2 alternating) come from the config.
    """
    per_layer_token = 2 * shape.num_kv_heads * shape.head_dim * dtype_bytes * batch
    held = sum(tokens if w is None else min(tokens, w) for w in shape.layer_windows)
    return per_layer_token * held


def optimizer_state_bytes_per_param(optimizer: str, state_bytes: int) -> float:
    """Bytes of state per trainable parameter for element-wise optimizers (not Adafactor)."""
    if optimizer in ("adamw", "adam"):
        return 2 * state_bytes
    if optimizer == "adamw-8bit":
        return 2 * (1 + 4 / 256)
    if optimizer == "sgd":
        return state_bytes
    if optimizer == "sgd-nomomentum":
        return 0
    raise ValueError(optimizer)


def adafactor_state_bytes(shape: ModelShape | None, trainable: int, state_bytes: int) -> int:
    """Adafactor's factored second moment: rows + columns per matrix, full for vectors."""
    if shape is None:
        side = math.isqrt(max(trainable, 0))
        return 2 * side * state_bytes
    matrices = shape.num_layers * sum(
        (m.in_features + m.out_features) * m.count for m in linear_matrices(shape)
    )
    embeds = _embedding_rows(shape) + shape.hidden_size
    if not shape.tie_word_embeddings:
        embeds += shape.vocab_size + shape.hidden_size
    return (matrices + embeds + small_parameter_count(shape)) * state_bytes


# ---------------------------------------------------------------------------------------------
# Activations


def _sum(tensors: list[tuple[int, int]], rounding: int) -> int:
    """Sum of ``count`` tensors of ``nbytes`` each, every tensor rounded up on its own."""
    total = 0
    for nbytes, count in tensors:
        if nbytes > 0 and count > 0:
            rounded = -(-nbytes // rounding) * rounding if rounding > 1 else nbytes
            total += rounded * count
    return total


def _scores_kept(shape: ModelShape, attention: str, training: bool, device: str) -> bool:
    if attention == "eager":
        return True
    # SDPA on the CPU falls back to the math kernel when attention dropout is active.
    return training and shape.attention_dropout > 0 and device == "cpu"


def _norm(shape: ModelShape, t: int, a: int) -> list[tuple[int, int]]:
    h = shape.hidden_size
    if shape.layer_norm_bias:  # LayerNorm: output, mean and rstd in fp32
        return [(t * h * a, 1), (t * 4, 2)]
    upcast = [(t * h * 4, 1)] if a != 4 else []  # RMSNorm computes in fp32
    return [*upcast, (t * 4, 1), (t * h * a, 2)]


def _block_training(
    shape: ModelShape, b: int, s: int, a: int, attention: str, device: str
) -> list[tuple[int, int]]:
    """Tensors one decoder block keeps for backward."""
    t = b * s
    h, q, kv, inter = shape.hidden_size, shape.q_dim, shape.kv_dim, shape.intermediate_size
    mask = 1 if device != "cpu" else a  # dropout masks: bool on CUDA, activation dtype on CPU
    out: list[tuple[int, int]] = []
    for _ in range(shape.norms_per_layer // 2):
        out += _norm(shape, t, a) * 2
    scores = b * shape.num_heads * s * s
    if _scores_kept(shape, attention, True, device):
        gqa = shape.num_kv_heads != shape.num_heads
        if shape.learned_positions:  # GPT-2 style fused qkv: q, k, v made contiguous
            out += [(t * q * a, 3)]
        else:
            out += [(t * q * a, 1), (t * (q if gqa else kv) * a, 2)]
        out += [(t * q * a, 1)]  # heads merged back
        softmax_bytes = a if shape.learned_positions else 4
        out += [(scores * softmax_bytes, 1)]
        if softmax_bytes != a:
            out += [(scores * a, 1)]
        if shape.attention_dropout > 0:
            out += [(scores * mask, 1), (scores * a, 1)]
    else:
        if shape.learned_positions:
            out += [(t * (q + 2 * kv) * a, 1)]
        else:
            out += [(t * q * a, 1), (t * kv * a, 2)]
        out += [(t * q * a, 1), (b * shape.num_heads * s * 4, 1)]
    if shape.resid_dropout > 0:
        out += [(t * h * mask, 2)]
    if shape.layer_norm_bias or a == 4:
        # Residual sums are saved as the next norm's input; a 16-bit RMSNorm saves its fp32
        # copy instead and the 16-bit sum is freed.
        out += [(t * h * a, 2)]
    if shape.num_experts:
        k = shape.experts_per_token
        out += [(t * shape.num_experts * a, 1), (t * shape.num_experts * 4, 1)]
        out += [(t * k * h * a, 2), (t * k * inter * a, 4)]
    elif shape.gated_mlp:
        out += [(t * inter * a, 4)]
    else:
        act = shape.activation
        extra = 4 if act == "gelu_new" else 1
        out += [(t * inter * a, 1 + extra)]
    return out


def _head_training(shape: ModelShape, b: int, s: int, a: int, device: str) -> list[tuple[int, int]]:
    """Tensors outside the blocks that backward needs: embeddings, final norm, the loss."""
    t = b * s
    h, v = shape.hidden_size, shape.vocab_size
    out: list[tuple[int, int]] = []
    if shape.learned_positions:
        if shape.embed_dropout > 0:
            out += [(t * h * (1 if device != "cpu" else a), 1), (t * h * a, 1)]
        else:
            out += [(t * h * a, 1)]
    else:
        embedding = [(t * h * a, 1)] if a == 4 else []  # 16-bit: the norm keeps an fp32 copy
        out += [*embedding, (s * shape.head_dim * a, 2)]  # rotary cos and sin
    out += _norm(shape, t, a)
    # The logits (and their fp32 copy in the loss) are not saved for backward: they are
    # temporaries held by the output. The loss keeps its fp32 log-softmax.
    out += [(t * v * 4, 1)]
    return out


def training_activation_bytes(
    shape: ModelShape,
    *,
    batch: int,
    seq: int,
    act_bytes: int = 2,
    attention: str = "sdpa",
    checkpointing: bool = False,
    device: str = "cuda",
    rounding: int = 1,
) -> int:
    """Peak activation bytes of a training step: what the forward keeps for backward.

    Per block (tokens T = batch × seq, width h, MLP width I, activation bytes a): the norms'
    outputs (and fp32 upcasts for 16-bit RMSNorm), q/k/v and the attention output, the
    softmax log-sum-exp (SDPA / flash) or the full ``batch × heads × seq × seq`` scores (eager),
    two residual sums, dropout masks, and the MLP's inputs (4 × T × I for a gated MLP). Outside
    the blocks: embeddings, the final norm and the loss's fp32 log-softmax. The logits are not
    saved for backward (the tracker counts them as temporaries).

    With gradient checkpointing each block's input is kept. The head's saved tensors are freed
    by the loss's backward, before the first block is recomputed (:func:`checkpoint_recompute_bytes`;
    its saved tensors are activations of that block, as torch's MemTracker books them), so the
    peak holds the kept inputs and the larger of the head and one block.
    """
    a = act_bytes
    block = _block_training(shape, batch, seq, a, attention, device)
    head = _head_training(shape, batch, seq, a, device)
    if not checkpointing:
        return shape.num_layers * _sum(block, rounding) + _sum(head, rounding)
    kept = shape.num_layers * _sum([(batch * seq * shape.hidden_size * a, 1)], rounding)
    return kept + max(_sum(head, rounding), _sum(block, rounding))


def checkpoint_recompute_bytes(
    shape: ModelShape,
    *,
    batch: int,
    seq: int,
    act_bytes: int = 2,
    attention: str = "sdpa",
    device: str = "cuda",
    rounding: int = 1,
) -> int:
    """Bytes of one block's activations, rebuilt during backward under gradient checkpointing."""
    return _sum(_block_training(shape, batch, seq, act_bytes, attention, device), rounding)


def inference_activation_bytes(
    shape: ModelShape,
    *,
    batch: int,
    seq: int,
    act_bytes: int = 2,
    attention: str = "sdpa",
    all_logits: bool = False,
    rounding: int = 1,
) -> int:
    """Peak activation bytes of an inference prefill of ``seq`` tokens (KV cache excluded).

    Inside the blocks the residual stream and one block's largest working set are alive at once:
    the attention phase (normed input, q, the attention output and, for eager attention, the
    fp32 scores and their cast) or the MLP phase (normed input and three ``T × I`` tensors).
    At the head the final norm's output and the logits are alive (last position only, as
    ``generate`` computes them, unless ``all_logits``). The peak is the larger of the two.
    Under ``no_grad`` nothing is saved for backward, so the tracker counts these bytes as
    temporaries, not activations.
    """
    a = act_bytes
    t = batch * seq
    h, q, inter = shape.hidden_size, shape.q_dim, shape.intermediate_size
    scores = batch * shape.num_heads * seq * seq
    attn = [(t * h * a, 2), (t * q * a, 2)]
    if attention == "eager":
        attn += [(scores * 4, 1), (scores * a, 1)]
    experts = shape.experts_per_token if shape.num_experts else 1
    mlp_tensors = 3 if shape.gated_mlp else 2
    mlp = [(t * h * a, 1), (t * experts * inter * a, mlp_tensors)]
    rows = t if all_logits else batch
    # At the head only the final norm's output and the logits are alive; generate() also keeps
    # an fp32 copy of the last position's logits.
    logits = [(t * h * a, 1), (rows * shape.vocab_size * a, 1)]
    if not all_logits:
        logits += [(rows * shape.vocab_size * 4, 1)]
    stream = _sum([(t * h * a, 2)], rounding)
    blocks = stream + max(_sum(attn, rounding), _sum(mlp, rounding))
    return max(blocks, _sum(logits, rounding))


def activation_bytes_for_module(
    model: Any,
    shape: ModelShape,
    *,
    batch: int,
    seq: int,
    training: bool,
    autocast_dtype: Any = None,
    rounding: int = 1,
) -> int:
    """Activation bytes predicted for a live transformers model, from what it says about itself."""
    dtype = autocast_dtype
    device = "cpu"
    for p in model.parameters():
        if p.is_floating_point():
            dtype = dtype or p.dtype
            device = p.device.type
            break
    a = dtype.itemsize if dtype is not None else 4
    config = getattr(model, "config", None)
    attention = str(getattr(config, "_attn_implementation", None) or "sdpa")
    if device == "meta":
        device = "cuda"
    if training:
        checkpointing = is_checkpointing(model)
        dropout_on = bool(getattr(model, "training", True))
        if not dropout_on:
            shape = _without_dropout(shape)
        return training_activation_bytes(
            shape,
            batch=batch,
            seq=seq,
            act_bytes=a,
            attention=attention,
            checkpointing=checkpointing,
            device=device,
            rounding=rounding,
        )
    return inference_activation_bytes(
        shape,
        batch=batch,
        seq=seq,
        act_bytes=a,
        attention=attention,
        all_logits=True,
        rounding=rounding,
    )


def is_checkpointing(model: Any) -> bool:
    """Whether a transformers model has gradient (activation) checkpointing on."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name) or name in getattr(model, "__dict__", {}):
            return bool(getattr(model, name, False))
    return False


def _without_dropout(shape: ModelShape) -> ModelShape:
    from dataclasses import replace

    return replace(shape, resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0)
