"""The synthetic demo: a MER2024-layout corpus made offline (demo.corpus) and the `demo` stage (demo.stage).

Usage:
    from demo.corpus import make_demo
    from demo.stage import DemoRunConfig, run_demo
"""
