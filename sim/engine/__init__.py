"""The engine: SimPy processes that admit, plan and retire requests step by step (schedule ->
execute -> postprocess), the paged KV store, the buffer pool, the planner and the executor seam.
Never imports a cost model or a backend."""
