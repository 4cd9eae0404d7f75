"""Rendering: the only place results become tables, JSON, Markdown, plots or HTML.

One module per result kind (``report.inspect``, ``report.optimize``, ...); shared formatting
helpers live in :mod:`onnxfit.report.common`.
"""
