"""Decoding on our transformer: greedy and sampled generation, speculative decoding and its draft
sources, and perplexity under a tiering policy."""
