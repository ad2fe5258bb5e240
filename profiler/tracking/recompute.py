"""Activation checkpointing: what a block recomputes in backward is an activation of that block.

``torch.utils.checkpoint`` (and transformers' ``gradient_checkpointing_enable()``, which calls
it) runs a block's forward a second time inside the backward pass and keeps what that forward
saves until the block's backward has used it. The exact strategy notices a recomputation when a
module's forward pre-hook runs inside a backward pass (the only way a forward runs there).

* ``use_reentrant=True``: the recomputation saves through whatever saved-tensor hooks are on the
  stack, exact mode's own included, so the ledger books each saved tensor as an activation of the
  module running, as in any forward. Nothing to do here.
* ``use_reentrant=False`` (transformers' default): checkpoint pushes saved-tensor hooks of its
  own (``_recomputation_hook``) that keep the recomputed tensors in its frame; the ledger's pack
  hook is not called. When the first module of the recomputation starts, the top hook pair is
  replaced by the same pair with the pack hook wrapped (:class:`_RecomputePack`): it tells the
  ledger about each tensor, then hands it to checkpoint's own hook unchanged (its early stop, an
  exception, goes through untouched). Checkpoint's exit pops the wrapper, so the hook stack ends
  as it was. The recomputed modules' forward hooks run even when checkpoint stops early (the
  engine registers them with ``always_call=True``), so module frames close as in any forward.

Cost: nothing per op and nothing per module outside a backward pass; one hook lookup per module
recomputed. Limits: a checkpointed function that calls no module is not seen (no hook fires); a
recomputed storage that outlives its use (it shares memory with a longer-lived tensor) stays an
activation until the backward pass ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Recomputation"]

_top_hooks = torch._C._autograd._top_saved_tensors_default_hooks
_pop_hooks = torch._C._autograd._pop_saved_tensors_default_hooks
_push_hooks = torch._C._autograd._push_saved_tensors_default_hooks
#: The qualified name of non-reentrant checkpoint's recomputation pack hook starts with this.
_RECOMPUTATION_HOOK = "_recomputation_hook."


class Recomputation:
    """Follows checkpoint's non-reentrant recomputations: each saved tensor is reported.

    Args:
        on_save: called with each tensor a recomputation keeps for backward.
    """

    def __init__(self, on_save: Callable[[torch.Tensor], None]) -> None:
        self.on_save = on_save
        #: Non-reentrant recomputations followed.
        self.count = 0

    def module_starts(self) -> None:
        """A module's forward started inside a backward pass: a recomputation."""
        hooks = _top_hooks(True)
        if hooks is None:
            return
        pack, unpack = hooks
        if type(pack) is _RecomputePack:
            return  # an inner module of a recomputation already followed
        if not getattr(pack, "__qualname__", "").startswith(_RECOMPUTATION_HOOK):
            return  # reentrant (the engine's own hooks see the saves) or someone else's hooks
        _pop_hooks()
        _push_hooks(_RecomputePack(pack, self.on_save), unpack)
        self.count += 1


class _RecomputePack:
    """Checkpoint's recomputation pack hook, wrapped: the tensor reported, then handed on."""

    __slots__ = ("inner", "on_save")

    def __init__(
        self, inner: Callable[[torch.Tensor], Any], on_save: Callable[[torch.Tensor], None]
    ) -> None:
        self.inner = inner
        self.on_save = on_save

    def __call__(self, tensor: torch.Tensor) -> Any:
        self.on_save(tensor)  # never raises: the strategy guards its own booking
        return self.inner(tensor)
