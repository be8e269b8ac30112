"""The trainer: LCQ / uniform quantizers, quantized models, the ``lcq train`` verb.

``from lcq_train import quantize_model, QuantPlan, quantizer_parameters, export_onnx`` (loaded on first use,
so that importing a light submodule such as :mod:`lcq_train.arguments` does not import torch).
"""

_LAZY = {"quantize_model": "plan", "QuantPlan": "plan", "apply_plan": "plan", "quantizer_parameters": "plan",
         "model_from_checkpoint": "factory", "load_factory": "factory", "export_onnx": "onnx_export"}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
