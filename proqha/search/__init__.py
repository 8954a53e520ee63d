"""The ProQHA progressive mixed-precision search and its sensitivity scores."""

from proqha.search.knobs import Knob, lowerable_knobs, model_knobs, sample_candidates
from proqha.search.progressive import SearchConfig, run_search
from proqha.search.scores import accuracy_score, hessian_score
from proqha.search.select import choose_candidate

__all__ = ["Knob", "SearchConfig", "accuracy_score", "choose_candidate", "hessian_score", "lowerable_knobs",
           "model_knobs", "run_search", "sample_candidates"]
