"""The generic training machinery shared by every task: distributed set-up, checkpoints, the loop."""
