"""Phase 2: can ‖q‖ set each query's key budget better than the head and the position can?

Teacher-forced forwards in which every query attends only to the keys its arm keeps (`mask`),
compared at matched mean budgets (`arms`, `plan`) with rules fitted on other documents (`rules`,
`data`), scored by next-token KL against the dense model (`quality`, `curves`); `passes` runs
the forwards of each stage and `run` ties the stages together, resumable and shardable like the
sweep.
"""

from spectra_interp.budget.run import run_budget

__all__ = ["run_budget"]
