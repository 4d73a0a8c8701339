"""Every figure matmeta draws, with matplotlib's Agg backend (no display needed).

One private module per topic (``_jmak.py``, ``_training.py``, ...), re-exported here.
"""
