"""Benchmark suites: a YAML matrix of methods x datasets x grid points x seeds run through the
training code path, with one report (``contrastlab bench SUITE.yaml``)."""
