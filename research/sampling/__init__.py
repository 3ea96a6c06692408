"""Decoding from a DecoderLM: cached ancestral sampling (greedy / temperature / top-k / top-p) with
per-row stop tokens, its no-cache reference, and beam search. All work under jax.jit and inside a
per-device function under jax.shard_map (static shapes, per-row PRNG keys, no host callbacks)."""
from research.sampling.beam import beam_search
from research.sampling.sampler import (choose, generate, naive_generate, process_logits,
                                       row_keys)

__all__ = ["beam_search", "choose", "generate", "naive_generate", "process_logits", "row_keys"]
