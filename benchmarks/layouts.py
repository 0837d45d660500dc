"""The batches the benchmarks time, shared so that every figure refers to the same layout."""

from __future__ import annotations

from typing import Any

from prefix_referee.verify import CaseSpec, parse_case

REQUESTS, TOKENS, HEADS, KV_HEADS, HEAD_DIM = 8, 4096, 16, 8, 128
# Two images per request: 256 and 1024 tokens, at different offsets per request.
RANGES = [[[64 + 97 * r, 64 + 97 * r + 255], [1500 + 131 * r, 1500 + 131 * r + 1023]]
          for r in range(REQUESTS)]
# Decode-heavy: many one-token steps over long cached contexts that hold images, beside two
# prefill chunks that start inside an image (chunked prefill of a VLM prompt).
DECODES, DECODE_CONTEXT, CHUNK = 64, 4096, 1024


def _spec(requests: list[dict[str, Any]], dtype: str, page_size: int | None) -> CaseSpec:
    return parse_case({"requests": requests, "num_heads": HEADS, "num_kv_heads": KV_HEADS,
                       "head_dim": HEAD_DIM, "dtype": dtype, "page_size": page_size, "seed": 0})


def prefill(dtype: str = "bfloat16", page_size: int | None = None) -> CaseSpec:
    """8 x 4096-token prompts, 16/8 heads, head_dim 128, images of 256 and 1024 tokens."""
    return _spec([{"query_len": TOKENS, "ranges": r} for r in RANGES], dtype, page_size)


def decode_heavy(dtype: str = "bfloat16", page_size: int | None = None) -> CaseSpec:
    """64 decode steps over 2-4k cached tokens plus two 1024-token chunks inside images."""
    decodes = [{"context_len": DECODE_CONTEXT // 2 + 31 * i, "query_len": 1,
                "ranges": [[100 + i, 100 + i + 575]]} for i in range(DECODES)]
    chunks = [{"context_len": 1024 * (i + 1), "query_len": CHUNK,
               "ranges": [[1024 * (i + 1) - 300, 1024 * (i + 1) + 700]]} for i in range(2)]
    return _spec(decodes + chunks, dtype, page_size)


# Gemma 4: local layers slide a 1024-token window and clamp image ranges to it; global layers
# see every key, at head dim 512. One batch serves both: an
# 8192-token prompt with four 280-token images, a 2048-token chunk whose cached context ends
# inside an image, and 8 decode steps over cached prompts with an image each; 16-token pages.
GEMMA4_LAYERS: dict[str, dict[str, Any]] = {
    "local": {"num_heads": 32, "num_kv_heads": 16, "head_dim": 256, "sliding_window": 1024,
              "clamp_ranges_to_window": True},
    "global": {"num_heads": 32, "num_kv_heads": 4, "head_dim": 512},
}
GEMMA4_IMAGE, GEMMA4_PROMPT, GEMMA4_CHUNK, GEMMA4_DECODES, GEMMA4_PAGE = 280, 8192, 2048, 8, 16


def _image(start: int) -> list[int]:
    return [start, start + GEMMA4_IMAGE - 1]


def gemma4(layer: str, dtype: str = "bfloat16", page_size: int | None = GEMMA4_PAGE,
           kv_dtype: str | None = None, kv_scale: str = "tensor") -> CaseSpec:
    """The Gemma 4 batch for a ``local`` or ``global`` layer (see :data:`GEMMA4_LAYERS`),
    its KV cache in ``kv_dtype`` (an FP8 dtype with descales per ``kv_scale``) if given."""
    prompt = {"query_len": GEMMA4_PROMPT,
              "ranges": [_image(s) for s in (300, 2500, 4700, 7000)]}
    # The chunk's context (4096 tokens) ends 140 tokens into its second image.
    chunk = {"context_len": 4096, "query_len": GEMMA4_CHUNK,
             "ranges": [_image(1000), _image(4096 - GEMMA4_IMAGE // 2)]}
    decodes = [{"context_len": 2048 + 512 * i, "query_len": 1, "ranges": [_image(200 + 97 * i)]}
               for i in range(GEMMA4_DECODES)]
    fp8 = {} if kv_dtype is None else {"kv_dtype": kv_dtype, "kv_scale": kv_scale}
    return parse_case({"requests": [prompt, chunk, *decodes], "dtype": dtype,
                       "page_size": page_size, "seed": 0, **GEMMA4_LAYERS[layer], **fp8})
