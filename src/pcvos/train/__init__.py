"""Training: static-image pre-training and per-clip video training (``pcvos train``).

- :mod:`pcvos.train.losses` — bootstrapped cross-entropy and the clip-level Dice loss;
- :mod:`pcvos.train.wrapper` — :class:`~pcvos.train.wrapper.PerClipTrainer`, the training forward;
- :mod:`pcvos.train.trainer` — the loop (DDP, AMP, checkpoints with exact resume, logging);
- :mod:`pcvos.train.config` — YAML configs with inheritance and overrides;
- :mod:`pcvos.train.cli` — ``register(subparsers)`` for the ``pcvos`` CLI; ``python -m pcvos.train``.

Data comes from :mod:`pcvos.data.train_datasets` and :mod:`pcvos.data.augment`.
"""
