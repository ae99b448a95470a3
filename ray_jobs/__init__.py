"""Everything that runs inside Ray: training loops, data loading, checkpoint save/restore, job entry points.

Nothing here imports Temporal: a Ray job must run the same whether ttrain or a person submitted it.
"""
