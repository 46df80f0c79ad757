"""Generated reasoning: sample chains of thought, label their steps with the prover, and rank
samples by query-key alignment against logit confidence and majority vote.

Layering: above ``models``/``extract`` (it runs models), below ``cli``.
"""

from qkscore.generation.folder import GenFolder
from qkscore.generation.generate import generate
from qkscore.generation.problems import Problem, parse_answer, render_prompt

__all__ = ["GenFolder", "Problem", "generate", "parse_answer", "render_prompt"]
