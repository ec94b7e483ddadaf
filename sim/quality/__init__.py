"""Quality: the synthetic attention model, the quality model (KV precision mix -> delta-PPL) and
its fit to measured perplexity."""
