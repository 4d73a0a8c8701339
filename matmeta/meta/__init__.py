"""Meta-learning: families and tasks, the one inner loop, MAML and its relatives."""

from matmeta.meta._inner import inner_loop

__all__ = sorted(["inner_loop"])
