"""Figures shared by the stage scripts (matplotlib, Agg backend, PNG out)."""
