"""How the optimizers lay out their per-parameter state, in one package.

- ``quantized``: the 8-bit moments (``state_bits=8``): blocks, the two maps, ``QuantizedMoments``.
- ``kept``: the two formats of sparse momentum's kept entries (index list, bitmap) and the one helper that
  reads either back as flat indices.
- ``layout``: the state keys of each layout, making zero moments in a group's layout, reading them back.
- ``checks``: ``state_bits`` values, and the checks that refuse state in another layout (a changed option,
  a loaded state dict).
- ``checkpoint_layout``: how each state key is stored in a resharding checkpoint (``spam_opt.checkpoint``).
"""
