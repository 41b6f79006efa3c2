"""The optimizers' arithmetic, apart from their classes (as ``torch.optim`` keeps its functional kernels).

``spam/`` and ``stable_spam/`` hold one module per path (``reference``, ``foreach``, ``compiled``, ``cpp``)
and the inputs every path of that optimizer takes; ``dispatch`` lists each optimizer's kernels per device and
picks one from the ``foreach``/``fused`` flags; ``cpp_ops`` loads the C++ source in ``csrc/`` (built by
``spam_opt._cpp_build``); ``draw`` draws sparse momentum's kept entries. Every kernel has the signature
``kernel(params, grads, states, gate, scalars) -> KernelResult``.
"""
