"""NormGate's explanation engine: NormGrad and baseline saliency methods behind one call (docs/saliency.md;
the methods themselves: docs/algorithms.md).

    from models.saliency import explain, list_methods
    maps = explain(model, images)                       # normgrad-conv1x1-combined, predicted class
    maps = explain(model, images, "gradcam", target=1)
    maps, logits = explain_with_logits(model, images)  # one forward for decision and heatmap
    by_method = explain_many(model, images, ["normgrad-conv1x1-combined", "normgrad-conv3x3-single"])  # one pass

See ``registry.explain`` for the arguments, ``normgrad`` for the method, ``hooks`` for the safety rules
(hooks removed and flags restored in ``finally``; one thread per model at a time).
"""

from models.saliency.registry import (
    DEFAULT_METHOD,
    SaliencyMethod,
    default_layers,
    explain,
    explain_many,
    explain_with_logits,
    get_method,
    list_methods,
    register_method,
)

__all__ = [
    "DEFAULT_METHOD",
    "SaliencyMethod",
    "default_layers",
    "explain",
    "explain_many",
    "explain_with_logits",
    "get_method",
    "list_methods",
    "register_method",
]
