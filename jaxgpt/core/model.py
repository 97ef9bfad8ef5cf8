"""The lecture's GPT (and its bigram warm-up) as Flax linen modules.

Shapes follow the lecture: B = batch, T = time (context length), C = channels (n_embd),
nh = number of heads, hs = head size (C // nh), V = vocabulary size.

The defaults are the lecture's architecture. A few switches (`activation`, `tie_embeddings`,
`bias`, `qkv_bias`, `lm_head_bias`) also describe the GPT-2 family (nanoGPT, Hugging Face GPT-2), so
their checkpoints load into the same modules. The modern recipe is a few more, each off by default:
rotary position embeddings (`position="rope"`), RMSNorm (`norm="rmsnorm"`), QK-norm (`qk_norm`),
ReLU squared (`activation="relu2"`), zero-initialised output projections (`zero_init_proj`) and
logit soft-capping (`logit_softcap`). `scale_proj_init` is GPT-2's (and nanoGPT's) init of those projections.

Mixed precision: parameters are float32 in training; `dtype` is the compute dtype of the matrix multiplies.
The residual stream, LayerNorm, softmax and the loss stay in float32 (like torch.autocast), and so do
RoPE's rotation, QK-norm's statistics and the soft-capped logits. For inference, parameters may be stored in
bfloat16 (`jaxgpt.weights.pretrained.cast_params`): each layer then computes with its weights rounded to bfloat16, the
residual stream still float32.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgpt.core.config import Attention, GPTConfig
from jaxgpt.core.layers import Dropout, cpu_dense_dot_general, gelu
from jaxgpt.core.mfu import flops_per_token
from jaxgpt.system.errors import UsageError
from jaxgpt.system.sharding import BATCH_AXES

_weight_init = nn.initializers.normal(stddev=0.02)  # the lecture's _init_weights
Decode = bool | Literal["rolling"]  # a model call's `decode`: False (training), True (KV cache) or "rolling"
_ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": gelu,  # torch.nn.GELU() (nanoGPT)
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),  # GPT-2's "gelu_new"
    "relu2": lambda x: jnp.square(nn.relu(x)),  # modded-nanogpt's ReLU squared
}


def compute_dtype(config: GPTConfig) -> jnp.dtype | None:
    """bfloat16, or None: compute in the parameters' own dtype (float32; float64 under jax_enable_x64)."""
    return None if config.dtype == "float32" else jnp.dtype(config.dtype)


def _projection_init(config: GPTConfig) -> Callable:
    """The init of a block's output projection into the residual stream (attention's and the MLP's): the
    lecture's N(0, 0.02), zeros (`zero_init_proj`), or GPT-2's N(0, 0.02 / sqrt(2 * n_layer))
    (`scale_proj_init`, nanoGPT's), which keeps the stream's variance from growing with the depth."""
    if config.zero_init_proj:
        return nn.initializers.zeros
    if config.scale_proj_init:
        return nn.initializers.normal(stddev=0.02 / np.sqrt(2 * config.n_layer))
    return _weight_init


def _dense(config: GPTConfig, features: int, name: str, use_bias: bool, projection: bool = False) -> nn.Dense:
    """A Dense layer; `projection`: a block's output projection into the residual stream (its own init)."""
    dot_general = cpu_dense_dot_general if config.dense_kernel == "cpu" else jax.lax.dot_general
    kernel_init = _projection_init(config) if projection else _weight_init
    return nn.Dense(features, use_bias=use_bias, dtype=compute_dtype(config), param_dtype=jnp.float32,
                    kernel_init=kernel_init, bias_init=nn.initializers.zeros, dot_general=dot_general, name=name)


def layer_norm(config: GPTConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, use_bias=config.bias, use_fast_variance=False, name=name)


def _rms_norm(config: GPTConfig, name: str) -> nn.RMSNorm:
    """x / sqrt(mean(x^2) + eps) * scale over the last axis, statistics in float32 (Llama's LlamaRMSNorm)."""
    return nn.RMSNorm(epsilon=config.layer_norm_eps, name=name)


def _norm(config: GPTConfig, name: str) -> nn.Module:
    """The normalization of the residual stream's branches and of the output: `config.norm`."""
    return _rms_norm(config, name) if config.norm == "rmsnorm" else layer_norm(config, name)


@functools.lru_cache(maxsize=16)
def rotary_tables(block_size: int, head_size: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """RoPE's cos and sin at every position, (block_size, hs) float64, in Llama's layout: dims i and i + hs/2 form
    a pair that turns by position * theta**(-2i/hs). Computed once in float64 (then rounded to the compute
    dtype), so the angles carry no float32 error however far the position."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_size, 2) / head_size)  # (hs/2,)
    angles = np.arange(block_size)[:, None] * inv_freq  # (block_size, hs/2)
    angles = np.concatenate([angles, angles], axis=-1)  # (block_size, hs)
    return np.cos(angles), np.sin(angles)


def rotate_half(x: jax.Array) -> jax.Array:
    """(x1, x2) -> (-x2, x1) over the halves of the last axis: the 90-degree turn of each pair (i, i + hs/2)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def _rotate(x: jax.Array, cos: np.ndarray | jax.Array, sin: np.ndarray | jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin in float32 (float64 in x64 tests), returned in x's dtype."""
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    rotated = x.astype(dtype) * jnp.asarray(cos, dtype) + rotate_half(x.astype(dtype)) * jnp.asarray(sin, dtype)
    return rotated.astype(x.dtype)


def apply_rotary(x: jax.Array, positions: jax.Array, config: GPTConfig) -> jax.Array:
    """Rotary position embedding of queries or keys x (B, nh, T, hs) at `positions` (T,), each < block_size
    -> like x.

    Llama's (and Hugging Face's `apply_rotary_pos_emb`): x * cos + rotate_half(x) * sin, computed in float32
    (float64 in x64 tests) and returned in x's dtype. A query at position m and a key at n then score
    q_m . k_n through their offset m - n only."""
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    cos, sin = (jnp.asarray(table, dtype)[positions]  # (T, hs), broadcast over (B, nh)
                for table in rotary_tables(config.block_size, config.head_size, config.rope_theta))
    return _rotate(x, cos, sin)


def rotate_back_one_lap(x: jax.Array, config: GPTConfig) -> jax.Array:
    """Keys x (B, nh, S, hs) rotated at positions n turned back to n - block_size (the rolling KV cache's older
    lap): the angles of position block_size, negated, from the same float64 tables."""
    cos, sin = (table[config.block_size]  # (hs,)
                for table in rotary_tables(config.block_size + 1, config.head_size, config.rope_theta))
    return _rotate(x, cos, -sin)


def softcap(logits: jax.Array, cap: float) -> jax.Array:
    """cap * tanh(logits / cap) in float32: logits squashed smoothly into (-cap, cap) (Gemma 2, modded-nanogpt)."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return cap * jnp.tanh(logits / cap)


SPLASH_BLOCK = 512  # positions per block of the splash kernel (at most; block_size if smaller)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal attention by the Pallas splash attention kernel (a TPU Mosaic kernel; on other backends only inside
    `jax.experimental.pallas.tpu.force_tpu_interpret_mode`): q, k, v (B, nh, T, hs) -> (B, nh, T, hs).

    The compiler cannot split a Mosaic kernel over devices: under a mesh made known while tracing
    (`mesh_context`), each device runs it on its own rows of the batch (shard_map over the batch axes)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return _splash_on_one_device(q, k, v)
    rows = jax.sharding.PartitionSpec(tuple(axis for axis in BATCH_AXES if axis in mesh.axis_names))
    return jax.shard_map(_splash_on_one_device, mesh=mesh, in_specs=(rows,) * 3, out_specs=rows,
                         check_vma=False)(q, k, v)  # the kernel does not say how its outputs vary


def _splash_on_one_device(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """The kernel on (B, nh, T, hs): the batch and heads go through it as B * nh heads of one causal mask; queries
    are scaled first (the kernel does not scale)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    B, nh, T, hs = q.shape
    block = min(SPLASH_BLOCK, T)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    mask = masks.MultiHeadMask([masks.CausalMask((T, T))] * (B * nh))
    kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1)
    heads = lambda x: x.reshape(B * nh, T, hs)  # noqa: E731
    return kernel(heads(q * hs**-0.5), heads(k), heads(v)).reshape(B, nh, T, hs)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: Attention,
                     dropout: Callable[[jax.Array], jax.Array], mask: jax.Array | None = None,
                     query_block: int | None = None,
                     record: Callable[[jax.Array], object] | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(hs), causal) v for every head: q (B, nh, Tq, hs), k, v (B, nh, Tk, hs) -> like q.

    `mask` (Tq, Tk) says which keys each query sees; None means the plain causal mask (Tq == Tk).

    "xla" is the lecture's explicit computation, with `dropout` applied to the attention weights. With the plain
    causal mask and a `query_block` < Tq (no dropout: the caller passes None while it drops weights), the queries
    go in blocks of that many positions, each against only the keys up to its last position: the scores of the
    masked upper triangle beyond the block are never computed (`causal_query_blocks`).
    "dot_product" calls jax.nn.dot_product_attention (XLA's implementation: the same math); "cudnn" its cuDNN
    flash attention (GPU, bfloat16), "splash" the Pallas splash attention kernel (TPU): neither stores the
    (T, T) weights. The fused kernels take the plain causal mask; a sampler's cached steps (a `mask`) take XLA's.
    None but "xla" has dropout on the weights: they equal "xla" with dropout off. Scores and softmax are float32.
    `record` ("xla" in one block only) is given the attention weights (B, nh, Tq, Tk), before dropout.
    """
    if implementation == "splash" and mask is None and q.shape[2] % 128 == 0:  # a sampler's odd windows: XLA's
        return splash_attention(q, k, v)
    if implementation != "xla":
        q, k, v = (x.swapaxes(1, 2) for x in (q, k, v))  # the (B, T, nh, hs) layout it takes
        if mask is None:
            kernel = "cudnn" if implementation == "cudnn" else "xla"
            return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=kernel).swapaxes(1, 2)
        return jax.nn.dot_product_attention(q, k, v, mask=mask[None, None], implementation="xla").swapaxes(1, 2)
    Tq, hs = q.shape[2], q.shape[-1]
    if mask is None and query_block and query_block < Tq:
        return causal_query_blocks(q, k, v, query_block)
    if mask is None:
        mask = jnp.tril(jnp.ones((Tq, Tq), dtype=bool))  # the future does not talk to the past
    # affinities, scaled so that unit-variance q, k give unit-variance scores
    score_dtype = jnp.promote_types(q.dtype, jnp.float32)  # float32, or float64 in x64 tests
    wei = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=score_dtype) * hs**-0.5  # (B, nh, Tq, Tk)
    wei = jax.nn.softmax(jnp.where(mask, wei, -jnp.inf), axis=-1)
    if record is not None:
        record(wei)
    wei = dropout(wei)
    return jnp.einsum("bhqk,bhkd->bhqd", wei.astype(v.dtype), v)  # (B, nh, Tq, hs)


def causal_query_blocks(q: jax.Array, k: jax.Array, v: jax.Array, query_block: int) -> jax.Array:
    """The lecture's causal attention, q, k, v (B, nh, T, hs) -> like q, with the queries in blocks of
    `query_block` positions, each against the keys up to its last position only: about half the scores and
    softmax work at long contexts (T = 256 in blocks of 64: 10 of 16 score blocks). Each query still sees every
    key before it, so the values equal one block's within float32 rounding (the same sums, in other orders)."""
    T, outputs = q.shape[2], []
    for start in range(0, T, query_block):
        end = min(start + query_block, T)
        sees = jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :]  # (end - start, end): keys up to itself
        outputs.append(causal_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end], "xla",
                                        lambda weights: weights, sees))
    return jnp.concatenate(outputs, axis=2)  # (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    """Multi-head masked self-attention: n_head heads of size hs side by side, then a projection.

    With `cache_index` (sampling), x holds the tokens at positions cache_index, cache_index + 1, ...; their keys
    and values are written into the 'cache' collection after those of earlier calls, and the queries attend to
    every cached position up to their own. With `rolling` as well (RoPE, one token per call), the cache is a ring
    of block_size slots and the token attends to the last block_size tokens, itself included, at any position
    (see `_extend_cache`).

    Options: `qk_norm` RMS-normalizes each head's queries and keys over hs, then `position="rope"` rotates them
    by their positions: modded-nanogpt's and Qwen3's order. (nanochat rotates first; without a learned scale,
    as there, both orders are the same, since a rotation keeps the RMS; with ours they differ.) Keys enter the
    cache rotated, at their own positions.
    """

    config: GPTConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True, cache_index: jax.Array | None = None,
                 rolling: bool = False) -> jax.Array:
        cfg = self.config
        B, T, C = x.shape
        nh, hs = cfg.n_head, cfg.head_size

        def heads(name: str) -> jax.Array:  # each head's keys, queries or values, all heads at once: (B, nh, T, hs)
            return _dense(cfg, C, name, cfg.qkv_bias)(x).reshape(B, T, nh, hs).swapaxes(1, 2)

        q, k, v = heads("query"), heads("key"), heads("value")
        if cfg.qk_norm:  # each head's queries and keys to RMS 1 (times a learned scale (hs,) shared by the heads)
            q, k = _rms_norm(cfg, "q_norm")(q), _rms_norm(cfg, "k_norm")(k)
        if cfg.position == "rope":
            positions = jnp.arange(T) if cache_index is None else cache_index + jnp.arange(T)  # (T,)
            if rolling:  # rotated at the ring slot the key goes to, not at the unbounded position
                positions = positions % cfg.block_size
            q, k = apply_rotary(q, positions, cfg), apply_rotary(k, positions, cfg)
        q, k = q.astype(v.dtype), k.astype(v.dtype)  # back to the compute dtype (QK-norm's output is float32)
        mask = None  # plain causal
        if cache_index is not None:
            k, v, mask = self._extend_cache(k, v, cache_index, rolling)  # keys and values (B, nh, S, hs)
        weights_dropout = functools.partial(Dropout(cfg.dropout), deterministic=deterministic)
        drops_weights = cfg.dropout > 0 and not deterministic  # the lecture's (T, T) dropout mask: one block
        inspected = self.is_mutable_collection("intermediates")  # the weights are sown there: one block, XLA's
        if inspected and cfg.attention != "xla":
            raise UsageError(f"attention={cfg.attention!r} does not compute the attention weights it applies; "
                             "inspect the model with attention='xla', the same function")
        query_block = None if drops_weights or inspected else cfg.query_block
        record = functools.partial(self.sow, "intermediates", "attention") if inspected else None
        out = causal_attention(q, k, v, cfg.attention, weights_dropout, mask, query_block, record)  # (B, nh, T, hs)
        out = out.swapaxes(1, 2).reshape(B, T, C)  # heads concatenated
        out = _dense(cfg, C, "proj", cfg.bias, projection=True)(out)
        return Dropout(cfg.dropout)(out, deterministic=deterministic)

    def _extend_cache(self, k: jax.Array, v: jax.Array, index: jax.Array,
                      rolling: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Write k, v (B, nh, T, hs) at positions index.. of the cache -> (keys, values, mask (T, S)).

        A new cache holds S = block_size positions; one passed in may hold fewer (the sampler grows it as it
        fills, so that attention reads only the positions in use).

        `rolling` (one token, a full-size cache): the cache is a ring of S = block_size slots, written at slot
        r = index % S, and the key was rotated at r (never at a position >= block_size). Slots <= r hold this
        lap's tokens index - r .., rotated at their slots; slots > r hold the previous lap's, index - S + 1 ..,
        each S positions older than its slot says: they are rotated back by S, so that the query, at r, scores
        every key through its true offset. The query sees all S slots once index >= S, else slots <= r."""
        B, nh, T, hs = k.shape
        shape = (B, nh, self.config.block_size, hs)
        cached_k = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
        S = cached_k.value.shape[2]
        slot = index % S if rolling else index
        cached_k.value = jax.lax.dynamic_update_slice_in_dim(cached_k.value, k, slot, axis=2)
        cached_v.value = jax.lax.dynamic_update_slice_in_dim(cached_v.value, v, slot, axis=2)
        if rolling:
            older = jnp.arange(S) > slot  # (S,) the previous lap
            keys = jnp.where(older[:, None], rotate_back_one_lap(cached_k.value, self.config), cached_k.value)
            return keys, cached_v.value, (~older | (index >= S))[None]  # mask (1, S)
        query_pos = index + jnp.arange(T)  # (T,)
        causal = jnp.arange(S) <= query_pos[:, None]  # (T, S)
        return cached_k.value, cached_v.value, causal


class FeedForward(nn.Module):
    """Per-token MLP: n_embd -> 4 * n_embd -> non-linearity -> n_embd."""

    config: GPTConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        x = _dense(cfg, 4 * cfg.n_embd, "fc", cfg.bias)(x)  # (B, T, 4C)
        x = _ACTIVATIONS[cfg.activation](x)
        x = _dense(cfg, cfg.n_embd, "proj", cfg.bias, projection=True)(x)  # (B, T, C)
        return Dropout(cfg.dropout)(x, deterministic=deterministic)


class Block(nn.Module):
    """Transformer block: communication (attention) followed by computation (MLP), pre-LayerNorm (or RMSNorm)."""

    config: GPTConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True, cache_index: jax.Array | None = None,
                 rolling: bool = False) -> jax.Array:
        attention = CausalSelfAttention(self.config, name="sa")
        x = x + attention(_norm(self.config, "ln1")(x), deterministic, cache_index, rolling)
        x = x + FeedForward(self.config, name="ffwd")(_norm(self.config, "ln2")(x), deterministic)
        return x


class GPT(nn.Module):
    """The lecture's GPTLanguageModel: idx (B, T) int -> logits (B, T, V).

    Token ids must be in [0, vocab_size): like torch.nn.Embedding's, an out-of-range id is not checked here
    (inside a compiled function it cannot be), so check inputs first (`check_tokens`).
    The config's "auto" choices (dtype, dense_kernel) are made for JAX's default backend where the model is traced
    (`GPTConfig.resolved`; a run's config arrives resolved).

    `decode=True` (sampling) continues the tokens of earlier decode calls, whose keys and values the 'cache'
    collection holds: apply with `mutable=["cache"]`, starting without a cache. The caller keeps the total
    number of tokens within block_size. `decode="rolling"` (RoPE only, one token per call) continues them without
    that limit: the cache keeps the last block_size tokens' keys and values, a sliding window (jaxgpt.sample).
    """

    config: GPTConfig

    @nn.compact
    def __call__(self, idx: jax.Array, deterministic: bool = True, decode: Decode = False) -> jax.Array:
        cfg = self.config.with_auto_choices()
        B, T = idx.shape
        if cfg.block_size < T:
            raise UsageError(f"sequence length {T} exceeds block_size {cfg.block_size}; crop the input")
        rolling = decode == "rolling"
        if rolling and (not has_rolling_cache(cfg) or T != 1):
            raise UsageError(f"decode='rolling' takes one token per call of a model with position='rope', got "
                             f"{T} tokens, position={cfg.position!r}")
        wte = nn.Embed(cfg.vocab_size, cfg.n_embd, embedding_init=_weight_init, name="token_embedding_table")
        cache_index = self._advance_cache_index(T) if decode else None  # position of idx[:, 0]
        pos = jnp.arange(T) if cache_index is None else cache_index + jnp.arange(T)  # (T,)
        x = wte(idx)  # (B, T, C): the residual stream, float32 also with bfloat16 params (inference)
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if cfg.position == "learned":  # with "rope", attention rotates queries and keys instead
            wpe = nn.Embed(cfg.block_size, cfg.n_embd, embedding_init=_weight_init, name="position_embedding_table")
            x = x + wpe(pos)
        for i in range(cfg.n_layer):
            x = Block(cfg, name=f"blocks_{i}")(x, deterministic, cache_index, rolling)
        x = _norm(cfg, "ln_f")(x)
        if cfg.tie_embeddings:
            logits = wte.attend(x)  # (B, T, V)
            if cfg.lm_head_bias:
                logits += self.param("lm_head_bias", nn.initializers.zeros, (cfg.vocab_size,))
        else:
            logits = _dense(cfg, cfg.vocab_size, "lm_head", cfg.lm_head_bias)(x)  # (B, T, V)
        return softcap(logits, cfg.logit_softcap) if cfg.logit_softcap else logits

    def _advance_cache_index(self, T: int) -> jax.Array:
        """Number of tokens cached by earlier decode calls; counts this call's T tokens for the next one."""
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        start = index.value
        index.value = start + T
        return start

    def flops_per_token(self, n_params: int) -> int:
        """Training FLOPs per token (see jaxgpt.core.mfu)."""
        return flops_per_token(self.config, n_params)


class BigramLanguageModel(nn.Module):
    """The lecture's first model: each token reads the next token's logits off a (V, V) table."""

    vocab_size: int

    @nn.compact
    def __call__(self, idx: jax.Array, deterministic: bool = True, decode: Decode = False) -> jax.Array:
        del deterministic, decode  # no dropout, and no context to cache: the arguments keep the models alike
        table = nn.Embed(self.vocab_size, self.vocab_size, name="token_embedding_table")
        return table(idx)  # (B, T, V)

    def flops_per_token(self, n_params: int) -> int:
        del n_params
        return 0  # a table lookup: no matmuls


LanguageModel = GPT | BigramLanguageModel  # idx (B, T) -> logits (B, T, V); both take deterministic and decode


def check_tokens(tokens, vocab_size: int, name: str = "tokens") -> np.ndarray:
    """`tokens` as an int32 array, after checking that they are integers (no silent cast of floats, strings or
    bools) in [0, vocab_size). The check runs on the host, before anything is compiled: a model cannot check ids
    inside a compiled function (out-of-range ids give NaN or wrap around there)."""
    array = np.asarray(tokens)
    if array.dtype == object or not np.issubdtype(array.dtype, np.integer):
        kind = type(tokens).__name__ if array.dtype == object or array.dtype.kind in "USO" else array.dtype
        raise UsageError(f"{name} must be integer token ids, got {kind}; encode text with the run's tokenizer")
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= vocab_size:
            raise UsageError(f"{name} must be token ids in [0, {vocab_size}), got values in [{low}, {high}]")
    return array.astype(np.int32)


def mesh_context(model: LanguageModel, mesh: jax.sharding.Mesh) -> contextlib.AbstractContextManager:
    """Entered inside a jitted function: makes `mesh` known to `model` while it is traced, where the model splits
    work over devices by hand (the splash kernel, `splash_attention`); nothing otherwise."""
    if isinstance(model, GPT) and model.config.attention == "splash":
        return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)
    return contextlib.nullcontext()


def build_model(config: GPTConfig) -> LanguageModel:
    """The module that `config.model_type` names: the only place that tells the models apart."""
    if config.model_type == "bigram":
        return BigramLanguageModel(config.vocab_size)
    return GPT(config)


def has_rolling_cache(config: GPTConfig) -> bool:
    """Whether config's model can decode with a rolling KV cache (`decode="rolling"`): a GPT with RoPE."""
    return config.model_type == "gpt" and config.position == "rope"


def init_params(config: GPTConfig, key: jax.Array):
    """A fresh parameter pytree for `config`'s model, drawn from `key`."""
    return build_model(config).init(key, jnp.zeros((1, config.block_size), jnp.int32))["params"]


@functools.lru_cache(maxsize=16)
def param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """'blocks_0/sa/query/kernel' -> shape, for every parameter of config's model, without allocating any."""
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(shapes, sep="/").items()}


def check_params(config: GPTConfig, params, source: str = "the params") -> None:
    """UsageError naming the first parameter of `params` that does not fit `config`'s model: missing, unexpected,
    of another shape, or not finite. `source` says where the params came from."""
    try:
        flat = traverse_util.flatten_dict(dict(params), sep="/")
    except (TypeError, ValueError):
        raise UsageError(f"{source} are not a parameter tree (got {type(params).__name__})") from None
    expected = param_shapes(config)
    mismatched = sorted(expected.keys() ^ flat.keys())
    if mismatched:
        problem = "lack" if mismatched[0] in expected else "have an unexpected"
        raise UsageError(f"{source} {problem} {mismatched[0]} for the config's model ({len(mismatched)} mismatches)")
    for path, shape in expected.items():
        if tuple(flat[path].shape) != shape:
            raise UsageError(f"{source}: {path} has shape {tuple(flat[path].shape)}, expected {shape} for the "
                             "config's model")
    for path, leaf in flat.items():
        if not bool(jnp.isfinite(leaf).all()):
            raise UsageError(f"{source}: {path} holds NaN or infinite values")


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(p.size for p in jax.tree_util.tree_leaves(params))
