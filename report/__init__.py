"""The run report: one static HTML page per run (run/report/index.html) built from what the run's stages stored.

Usage:
    from report.build import ReportConfig, build_report
    summary = build_report(ReportConfig(run=Path("runs/a")))
    summary.index          # run/report/index.html: open it from the file system, no server needed
"""
