"""The machinery train.py, sample.py, chat.py, eval.py, bench.py, export.py and plot.py share: one job per
module, each named in its first line. Nothing here runs on import."""
