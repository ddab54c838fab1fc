"""Statistics of ‖q‖ against H: mergeable per-window sums, inference, the pass rule, the verdict."""
