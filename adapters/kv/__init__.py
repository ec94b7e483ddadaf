"""K/V storage for the real executors: the cache protocol and its contiguous cache, the paged
store with a precision per block, its per-step view, and group-wise quantization."""
