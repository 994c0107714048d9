"""The policy decision, pure: Cedar over labels and the directory, explained and simulated.

``model`` holds the values (facts, decisions) every layer above records or shows;
``bundle`` loads a policy set (``lint`` checks each file first); ``entities`` turns the
directory and a bulletin into Cedar entities; ``engine`` decides over the slice of them
each question can reach (``slicing``), leaving out for resolve whom the set certainly
denies (``prefilter``); ``explain`` words a decision; ``simulate`` compares two bundles.
No I/O beyond reading the bundle's files: the directory comes in as a snapshot, the time
as ``now``.
"""
