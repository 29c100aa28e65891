"""The serving half of the cost model: inference engine instances priced over numpy arrays of plans.

It reuses the training half's accounting (parameter counts, FLOPs, GEMM rates, collectives) and adds what
only serving has: the KV cache, the decode step, the prefill of a request, queueing and service levels.
"""
