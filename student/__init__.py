"""The student: an attention-fusion model over the cached features, trained on labelled + pseudo-labelled clips
(student.fusion, student.linear, student.train), and the stages that train and use it (`distill`, `submit`).

`distill` (student.distill) reads the run (student.inputs), trains a student per round (student.rounds), writes
the filter report (student.filter_report) and, with --report, the ablation (student.ablation).

Usage:
    from student.distill import DistillConfig, distill
    from student.submit import SubmitConfig, submit
"""
