from taosr.reasoning.format import (  # noqa: F401
    ParsedReasoning, conclusion, normalize, parse_reasoning, render_reasoning, token_step_index,
)
