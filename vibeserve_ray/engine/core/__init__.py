"""The engine core, shared by every model family: the front and its step loop
(llm_engine, engine_process), the scheduler, the explicit batch, the KV cache and its
block pool, a hybrid's state cache and prefix snapshots, the model runner, sampling,
speculation and constrained decoding."""
