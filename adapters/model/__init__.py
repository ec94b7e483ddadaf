"""Our torch transformers and what feeds them: the model code, Hugging Face and GGUF loaders, the
tokenizer and real prompt text."""
