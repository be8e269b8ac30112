"""Compiler: trained LCQ checkpoint -> integer-only compiled model, and its reference executor.

Modules: ``graph`` (the compiled model's nodes), ``stages`` (output-stage
constants), ``capture`` (a model's operations, by ``torch.fx`` tracing; needs torch),
``lower`` (PyTorch model -> graph; needs torch), ``network`` (the whole-network plan), ``format`` (the
versioned file; numpy only), ``reference`` (the integer executor; numpy only),
``agreement`` (integer path vs the PyTorch fake-quantized model), ``report``
(per-layer sizes), ``cli`` (the ``lcq compile``, ``eval`` and ``report`` verbs).
"""
