"""Conformance of the emitted launches with the real frameworks (see ``plan_grid`` and ``.ci/conformance``)."""
