"""Model presets: the attention shapes of real vision-language models (``--model NAME``).

A preset narrows the space to one model's layer kinds (heads, head dims, window, clamp,
softcap, softmax scale, image sizes) and leaves the layouts free: lengths, chunks,
decodes, pages and values still vary. Every number comes from the model's published
configuration; ``sources`` says where (transformers' conversion scripts write the
released ``config.json`` files; docs/models.md has the details and what engines differ on).
"""

from __future__ import annotations

from dataclasses import dataclass

from prefix_referee.fuzz.cases.strategies import Space

TRANSFORMERS = "github.com/huggingface/transformers/blob/main/src/transformers/models"


@dataclass(frozen=True)
class LayerKind:
    """One kind of attention layer of a model."""

    name: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_window: int | None
    clamp_ranges_to_window: bool
    softmax_scale: float


@dataclass(frozen=True)
class ModelPreset:
    """A model's layer kinds and images; ``images`` False: image tokens attend causally."""

    name: str
    layers: tuple[LayerKind, ...]
    image_sizes: tuple[int, ...]
    images: bool = True
    prefix_lm: bool = False
    sources: tuple[str, ...] = ()

    def spaces(self, base: Space) -> list[Space]:
        """One space per layer kind: ``base``'s layouts with this model's shapes (and
        ``base``'s KV cache dtypes: ``--kv-dtype`` gives every layer kind an FP8 cache)."""
        longest = max(base.max_seq_len, min(self.image_sizes) + 64)
        return [base.narrowed(
            heads=((kind.num_heads, kind.num_kv_heads),), head_dims=(kind.head_dim,),
            value_dims=False, softcap=False, scales=True, softmax_scales=(kind.softmax_scale,),
            default_scale=False,
            window=kind.sliding_window is not None,
            windows=None if kind.sliding_window is None else (kind.sliding_window,),
            clamp=kind.clamp_ranges_to_window, max_seq_len=longest,
            max_ranges=base.max_ranges if self.images else 0,
            image_sizes=self.image_sizes, prefix_lm=self.prefix_lm)
            for kind in self.layers]


# Gemma 3 27B: query_pre_attn_scalar 168 = 5376 // 32, so the scale is 168 ** -0.5.
_GEMMA3_SCALE = 168 ** -0.5

MODELS: dict[str, ModelPreset] = {m.name: m for m in [
    ModelPreset(
        "gemma3-27b",
        (LayerKind("local", 32, 16, 128, 1024, True, _GEMMA3_SCALE),
         LayerKind("global", 32, 16, 128, None, False, _GEMMA3_SCALE)),
        image_sizes=(256,),
        sources=(f"{TRANSFORMERS}/gemma3/convert_gemma3_weights.py (_VARIANT_GEMMA_3_27B: "
                 "32/16 heads, head_dim 128, sliding_window 1024, query_pre_attn_scalar 168, "
                 "no attn_logit_softcapping)",
                 f"{TRANSFORMERS}/gemma3/configuration_gemma3.py (sliding_window_pattern 6, "
                 "mm_tokens_per_image 256)")),
    ModelPreset(
        "gemma4-31b",
        (LayerKind("local", 32, 16, 256, 1024, True, 1.0),
         LayerKind("global", 32, 4, 512, None, False, 1.0)),
        image_sizes=(70, 140, 256, 280),
        sources=(f"{TRANSFORMERS}/gemma4/convert_gemma4_weights.py (_VARIANT_GEMMA_4_31B: "
                 "32/16 heads, sliding_window 1024, num_global_key_value_heads 4, "
                 "use_bidirectional_attention 'vision')",
                 f"{TRANSFORMERS}/gemma4/configuration_gemma4.py (head_dim 256, "
                 "global_head_dim 512, no attention softcap)",
                 f"{TRANSFORMERS}/gemma4/modeling_gemma4.py (scaling 1.0: Q/K RMSNorm instead; "
                 "local layers AND(window, OR(causal, image)), i.e. ranges clamped)",
                 f"{TRANSFORMERS}/gemma4/image_processing_gemma4.py (_SUPPORTED_SOFT_TOKENS "
                 "70, 140, 280, 560, 1120; max_soft_tokens 280 by default; a square image "
                 "gives 256)")),
    ModelPreset(
        "gemma4-e4b",
        (LayerKind("local", 8, 2, 256, 512, True, 1.0),
         LayerKind("global", 8, 2, 512, None, False, 1.0)),
        image_sizes=(280,), images=False,
        sources=(f"{TRANSFORMERS}/gemma4/convert_gemma4_weights.py (_VARIANT_GEMMA_4_E4B: "
                 "8/2 heads, head_dim 256, global_head_dim 512, sliding_window 512 by default, "
                 "use_bidirectional_attention None: image tokens attend causally)",)),
    ModelPreset(
        "paligemma",
        (LayerKind("prefix", 8, 1, 256, None, False, 256 ** -0.5),),
        image_sizes=(256, 1024), prefix_lm=True,
        sources=(f"{TRANSFORMERS}/paligemma/convert_paligemma_weights_to_hf.py (Gemma 2B: "
                 "8/1 heads, head_dim 256, no window, no softcap; (image_size / 14)^2 image "
                 "tokens: 256 at 224 px, 1024 at 448 px)",
                 f"{TRANSFORMERS}/paligemma/modeling_paligemma.py (the prefix, image + prompt, "
                 "attends bidirectionally; the suffix is causal)")),
]}
