"""Drop-in modules for code written against other steering libraries, on steerable's engine.

- ``steerable.compat.steering_vectors``: the public API of steering-vectors 0.12.2;
- ``steerable.compat.repeng``: repeng's ``DatasetEntry``, ``ControlVector`` and ``ControlModel``.

Change the import line, keep the code: the vectors are the same as those libraries' (see
docs/migrating.md for the few places where they were wrong and these are not).
"""
