"""Consistency filtering of the teachers' probabilities into pseudo-labels for the student.

Usage:
    from pseudo.select import FilterConfig, select_pseudo_labels
    pseudo = select_pseudo_labels(probs, names, FilterConfig())   # probs: (agents, clips, 6)
"""
