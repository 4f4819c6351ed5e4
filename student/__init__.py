"""The student: an attention-fusion model over the cached features, trained on labelled + pseudo-labelled clips
(student.fusion, student.train), and the stages that train and use it (`distill`, `submit`).

Usage:
    from student.distill import DistillConfig, distill
    from student.submit import SubmitConfig, submit
"""
