"""Audio in hop by hop, final frames out: the stream's windows, the batched engine, a stream of
one, and the budget that times a hop."""
