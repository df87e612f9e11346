"""The planner: vLLM's memory arithmetic and the placement of models on GPUs (standard library only)."""
from llm_appliance.plan.config import ModelShape, parse_config
from llm_appliance.plan.errors import PlanError
from llm_appliance.plan.memory import MemoryEstimate, estimate_memory

__all__ = ["ModelShape", "parse_config", "PlanError", "MemoryEstimate", "estimate_memory"]
