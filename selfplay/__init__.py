"""selfplay: iterative self-play preference training for language models.

One iteration is ``prompts -> generate -> judge -> pairs -> train -> sync``. The library in this package
is pure Python + torch and imports without Ray, vLLM or DeepSpeed; those engines live behind
``actors/`` and the few modules that say so in their docstring, and are imported lazily.
"""

__version__ = "0.1.0"
