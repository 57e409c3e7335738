"""Pictures, published baselines and the self-contained HTML report of an evaluation."""
