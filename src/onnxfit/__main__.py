"""``python -m onnxfit`` runs the command line."""

from onnxfit.cli import main

main()
