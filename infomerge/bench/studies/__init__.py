"""Measurement studies of the compressors: agreement of each fixed-budget graph with its paper-exact
reference on real video (:mod:`.agreement`), and reference timing at the 7B shape
(:mod:`.reference_timing`). Each is a ``python -m`` entry point whose figures go to ``docs/``."""
