"""The on-disk index: immutable segments, numbered generations, FAISS per segment and dim.

files (reads through a bounded descriptor cache) -> segment (one build/add/compact/refresh/import)
-> generation (what a commit makes visible) -> build / updates / refresh / vectors (the writers).
"""
