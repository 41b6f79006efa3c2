"""The usual SPAM parameter grouping: sparse momentum for block matrices, dense for the rest."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


def _embedding_params(model: nn.Module) -> set[int]:
    """Ids of input embeddings and the output head (tied or not): these keep dense momentum."""
    ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    get_output = getattr(model, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    if head is not None and getattr(head, "weight", None) is not None:
        ids.add(id(head.weight))
    return ids


def param_groups(
    model: nn.Module,
    density: float = 1.0,
    weight_decay: float = 0.0,
    no_decay_norms_and_biases: bool = False,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Param groups as the SPAM paper's runs set them up.

    * ``"blocks"``: the 2-D (or higher) weights of attention and MLP blocks, with ``density``;
    * ``"dense"``: input embeddings, the output head, and 1-D parameters (norms, biases);
    * ``"no_decay"``: norms and biases without weight decay, when ``no_decay_norms_and_biases`` is set.

    Extra keyword arguments (e.g. ``lr``, ``reset_interval``) are set on every group. Parameters that do not
    require gradients are left out; shared (tied) parameters appear once. Empty groups are dropped.

    Example::

        opt = SPAM(param_groups(model, density=0.25, weight_decay=0.1), lr=1e-3)
    """
    embeddings = _embedding_params(model)
    blocks: list[Tensor] = []
    dense: list[Tensor] = []
    no_decay: list[Tensor] = []
    seen: set[int] = set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2:
            (no_decay if no_decay_norms_and_biases else dense).append(p)
        elif id(p) in embeddings:
            dense.append(p)
        else:
            blocks.append(p)
    groups = [
        dict(name="blocks", params=blocks, density=density, weight_decay=weight_decay, **group_options),
        dict(name="dense", params=dense, density=1.0, weight_decay=weight_decay, **group_options),
        dict(name="no_decay", params=no_decay, density=1.0, weight_decay=0.0, **group_options),
    ]
    return [g for g in groups if g["params"]]
