"""The ``lcq`` command line, above every stage: it collects each stage's verbs and runs ``demo``."""
