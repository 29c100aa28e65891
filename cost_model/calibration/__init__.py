"""The cost model's test bench against measured runs: validation, cross-validated calibration and the
uncertainty bands derived from it. Datasets live in ``data/`` beside the code that reads them."""
