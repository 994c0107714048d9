"""The policy decision, pure: Cedar over labels and the directory, explained and simulated.

``model`` holds the values (facts, decisions) every layer above records or shows; ``engine``
loads a bundle (``lint`` checks each file first) and decides; ``explain`` words a decision;
``simulate`` compares two bundles. No I/O beyond reading the bundle's files: the directory
comes in as a snapshot, the time as ``now``.
"""
