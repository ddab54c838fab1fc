"""Phase 2: can ‖q‖ set each query's key budget better than the head and the position can?

Teacher-forced forwards in which every query attends only to the keys its arm keeps (`mask`),
compared at matched mean budgets. The arms (`arms.REGISTRY`) differ only in their cells (`cells`):
one loss-optimal allocator (`allocate`) gives every cell its kept fraction from loss curves
measured on calibration documents (`probes`, `data`), the plan (`plan`) meets each budget on the
evaluation documents, and next-token KL against the dense model (`quality`, `curves`) decides the
verdict (`verdict`); `passes` runs the forwards of each stage and `run` ties the stages together,
resumable and shardable like the sweep.
"""

from spectra_interp.budget.run import run_budget

__all__ = ["run_budget"]
