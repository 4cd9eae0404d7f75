"""The project's fuzzer: seeded mutated models and images thrown at the ``onnxfit`` CLI.

* :mod:`fuzz.seeds` builds the small valid seed models (a conv net, a model with a local
  function, a QDQ model) and seed images in code;
* :mod:`fuzz.models`, :mod:`fuzz.tricks` (runtime-only and external-data) and
  :mod:`fuzz.images` turn a seed and a random generator into one mutated case of a named
  mutation class (bit flips, truncations, structural edits, external-data and file-system
  tricks...); :mod:`fuzz.protomut` edits random protobuf fields;
* :mod:`fuzz.cases` generates the whole seeded corpus (``generate``);
* :mod:`fuzz.runner` runs each case's commands (``inspect``, ``optimize --precision fp16``,
  ``run``, ``eval``) in a child process with a timeout and an RSS watch, and judges it: exit 0,
  or exit 2/3 with one ``error:`` line and no traceback, passes; a traceback, a crash, a hang,
  more than 1 GiB RSS, a file left under the output name or a changed input fails;
* :mod:`fuzz.report` writes the per-class summary (``benchmarks/results/fuzz.md``).

``make fuzz`` runs ``python -m fuzz`` (with ``tests`` on the path) over the full corpus;
``tests/test_fuzz_sample.py`` runs a seeded sample inside ``make test``.
"""
