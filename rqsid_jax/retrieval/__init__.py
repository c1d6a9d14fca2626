"""TIGER generative retriever: SID tokens, NNX encoder-decoder, training, constrained beam search, metrics."""
