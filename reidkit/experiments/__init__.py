"""Experiments that drive the trainers: ablation grids (``ablate``), k-fold cross-validation (``cv``),
pseudo-labelling a labelled set to measure its labels (``pseudo_label``), the demo (``demo``) and the
tables of published results run again (``reproduce``, tables in ``reidkit/reproduce/*.yaml``).

They sit above ``reidkit.engine`` (which holds only training) and below the commands; nothing in the
engine imports them (the ``layers`` contract of pyproject.toml).
"""
