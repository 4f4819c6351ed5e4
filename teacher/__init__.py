"""Teacher agents: models that score clips with a probability over the 6 labels, and the labelling run.

Usage:
    from teacher.label import TeacherLabelConfig, teacher_label
    teacher_label(TeacherLabelConfig(data=Path("mer2024-dataset"), run=Path("runs/a")))
"""
