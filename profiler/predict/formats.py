"""Weight formats: dense dtypes and the real quantisation layouts, byte for byte.

Each quantised format stores a linear layer's weight matrix (``in_features × out_features``)
in its own layout; what a format leaves unquantised (embeddings, ``lm_head``, norms, biases,
MoE routers) stays in 16-bit (GGUF: norms in F32). Layouts, per matrix of ``n = in × out``
weights:

* **GPTQ** 4-bit, group size g (AutoGPTQ / ``QuantLinear``): ``qweight`` int32 packed
  (n/2 bytes), ``qzeros`` int32 packed (in/g × out/2 bytes), ``scales`` fp16 (in/g × out × 2
  bytes), ``g_idx`` int32 (in × 4 bytes): 4 + 4/g + 16/g bits per weight plus the index.
  Embeddings and ``lm_head`` stay fp16.
* **AWQ** 4-bit GEMM, group size g: ``qweight`` (n/2 bytes), ``qzeros`` (in/g × out/2 bytes),
  ``scales`` fp16 (in/g × out × 2 bytes); no ``g_idx``.
* **bitsandbytes NF4** (``Linear4bit``): packed 4-bit weights (n/2 bytes) plus one fp32 absmax
  per 64-weight block (+0.5 bit) and the 16-entry fp32 NF4 code per matrix. With double
  quantisation the absmax values are themselves stored in 8 bits (n/64 bytes) with one fp32
  absmax per 256 blocks, a 256-entry fp32 code and an fp32 offset (+0.127 bit).
* **bitsandbytes LLM.int8** (``Linear8bitLt``): int8 weights (n bytes) and one fp32 scale per
  output row.
* **GGUF** (llama.cpp): Q8_0 blocks of 32 weights in 34 bytes (8.5 bpw); Q4_K super-blocks of
  256 in 144 bytes (4.5 bpw), Q5_K 176 bytes (5.5 bpw), Q6_K 210 bytes (6.5625 bpw). The "_M"
  mixes keep ``output.weight`` in Q6_K and put ``attn_v`` and ``ffn_down`` in Q6_K on the layers
  llama.cpp's ``use_more_bits`` picks (the first and last eighth, and every third in between),
  which brings Q4_K_M to about 4.85 and Q5_K_M to about 5.69 bits per weight over a model.
  Norms stay F32; token embeddings use the base type.
* **int8 / int4** (generic): the seed's rule of thumb, 1 and 0.5 bytes for every parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

from profiler.errors import UnknownNameError

__all__ = ["FORMATS", "WeightFormat", "find_format", "matrix_bytes"]


@dataclass(frozen=True, slots=True)
class WeightFormat:
    """One way of storing weights: a dense dtype or a quantisation layout."""

    name: str
    description: str
    kind: str  # "dense", "flat", "gptq", "awq", "nf4", "int8-bnb", "gguf"
    bytes_per_param: float = 2.0  # dense and flat kinds
    group_size: int = 128
    double_quant: bool = False
    base_block: tuple[int, int] = (0, 0)  # GGUF base type: (weights per block, bytes per block)
    mix: bool = False  # GGUF "_M" mix (Q6_K on output, attn_v/ffn_down where use_more_bits)
    aliases: tuple[str, ...] = ()

    @property
    def quantized(self) -> bool:
        """Whether the format stores linear weights in fewer than 16 bits."""
        return self.kind != "dense"

    @property
    def bits(self) -> float:
        """Nominal bits per quantised weight (16 or 32 for dense formats)."""
        if self.kind in ("dense", "flat"):
            return self.bytes_per_param * 8
        if self.kind == "gguf":
            return self.base_block[1] * 8 / self.base_block[0]
        return 8.0 if self.kind == "int8-bnb" else 4.0

    @property
    def keep_bytes(self) -> int:
        """Bytes per parameter of what the format leaves unquantised (16-bit; dense: itself)."""
        if self.kind in ("dense", "flat"):
            return int(self.bytes_per_param) if self.bytes_per_param >= 2 else 2
        return 2


_Q8_0 = (32, 34)
_Q4_K = (256, 144)
_Q5_K = (256, 176)
_Q6_K = (256, 210)

#: Every weight format the estimator knows.
FORMATS: tuple[WeightFormat, ...] = (
    WeightFormat("fp32", "32-bit float", "dense", 4.0, aliases=("float32", "f32")),
    WeightFormat("fp16", "16-bit float", "dense", 2.0, aliases=("float16", "f16", "half")),
    WeightFormat("bf16", "bfloat16", "dense", 2.0, aliases=("bfloat16",)),
    WeightFormat("int8", "8-bit, 1 byte per parameter (rule of thumb)", "flat", 1.0),
    WeightFormat("int4", "4-bit, 0.5 byte per parameter (rule of thumb)", "flat", 0.5),
    WeightFormat(
        "gptq",
        "GPTQ 4-bit, group 128, fp16 scales, packed zeros, g_idx",
        "gptq",
        aliases=("gptq-4bit", "gptq-int4"),
    ),
    WeightFormat(
        "gptq-g32", "GPTQ 4-bit, group 32", "gptq", group_size=32, aliases=("gptq-4bit-32g",)
    ),
    WeightFormat("awq", "AWQ 4-bit GEMM, group 128", "awq", aliases=("awq-4bit",)),
    WeightFormat("nf4", "bitsandbytes NF4, fp32 absmax per 64", "nf4", aliases=("bnb-nf4",)),
    WeightFormat(
        "nf4-dq",
        "bitsandbytes NF4 with double quantisation",
        "nf4",
        double_quant=True,
        aliases=("bnb-nf4-dq", "nf4-double-quant", "nf4dq"),
    ),
    WeightFormat(
        "llm-int8",
        "bitsandbytes LLM.int8, fp32 scale per row",
        "int8-bnb",
        aliases=("bnb-int8", "bnb-8bit"),
    ),
    WeightFormat("q8_0", "GGUF Q8_0", "gguf", base_block=_Q8_0, aliases=("gguf-q8_0",)),
    WeightFormat(
        "q5_k_m", "GGUF Q5_K_M", "gguf", base_block=_Q5_K, mix=True, aliases=("gguf-q5_k_m",)
    ),
    WeightFormat(
        "q4_k_m", "GGUF Q4_K_M", "gguf", base_block=_Q4_K, mix=True, aliases=("gguf-q4_k_m",)
    ),
)


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


_INDEX = {_key(a): f for f in FORMATS for a in (f.name, *f.aliases)}


def find_format(name: str) -> WeightFormat:
    """The format called ``name`` (case and ``-``/``_`` do not matter).

    Raises:
        UnknownNameError: no such format; the closest names are suggested.
    """
    fmt = _INDEX.get(_key(name))
    if fmt is None:
        raise UnknownNameError("precision", name, [f.name for f in FORMATS])
    return fmt


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's choice of layers that get a higher type in the ``_M`` mixes."""
    eighth = layers // 8
    return layer < eighth or layer >= 7 * layers // 8 or (layer - eighth) % 3 == 2


def _gguf_bytes(n: int, block: tuple[int, int]) -> int:
    return _ceil(n, block[0]) * block[1]


def matrix_bytes(
    fmt: WeightFormat,
    in_features: int,
    out_features: int,
    *,
    role: str = "",
    layer: int = 0,
    layers: int = 1,
) -> int:
    """Bytes one linear weight matrix takes in ``fmt`` (bias not included).

    Args:
        role: ``"attn_v"``, ``"ffn_down"``, ``"output"`` or anything else; GGUF mixes use it.
        layer, layers: the block index and count, for GGUF's ``use_more_bits``.
    """
    n = in_features * out_features
    if fmt.kind in ("dense", "flat"):
        return int(n * fmt.bytes_per_param)
    if fmt.kind in ("gptq", "awq"):
        groups = _ceil(in_features, fmt.group_size)
        packed = _ceil(n, 2) + groups * _ceil(out_features, 2) + groups * out_features * 2
        return packed + (in_features * 4 if fmt.kind == "gptq" else 0)
    if fmt.kind == "nf4":
        blocks = _ceil(n, 64)
        packed = _ceil(n, 2) + 16 * 4
        if not fmt.double_quant:
            return packed + blocks * 4
        return packed + blocks + _ceil(blocks, 256) * 4 + 256 * 4 + 4
    if fmt.kind == "int8-bnb":
        return n + out_features * 4
    if fmt.kind == "gguf":
        block = fmt.base_block
        if fmt.mix and (
            role == "output" or (role in ("attn_v", "ffn_down") and use_more_bits(layer, layers))
        ):
            block = _Q6_K
        return _gguf_bytes(n, block)
    raise AssertionError(f"unknown format kind {fmt.kind}")


def embedding_bytes(fmt: WeightFormat, rows: int, cols: int) -> int:
    """Bytes of an embedding table: quantised only by GGUF and the flat rules."""
    if fmt.kind == "gguf":
        return _gguf_bytes(rows * cols, fmt.base_block)
    if fmt.kind in ("dense", "flat"):
        return int(rows * cols * fmt.bytes_per_param)
    return rows * cols * fmt.keep_bytes


def small_bytes(fmt: WeightFormat, count: int) -> int:
    """Bytes of norms, biases and routers: 16-bit in quantised formats (GGUF: F32)."""
    if fmt.kind in ("dense", "flat"):
        return int(count * fmt.bytes_per_param)
    return count * (4 if fmt.kind == "gguf" else 2)
