"""Plots and reports of a run folder."""

from contrastlab.report.plots import plot_run, read_metrics

__all__ = ["plot_run", "read_metrics"]
