"""JSON Logic compiled to ClickHouse SQL over one entity row (see engine.compiler.operators)."""

from engine.compiler.operators import CompiledLogic, Kind, compile_logic, compile_value, logic_variables, top_level_conditions

__all__ = ["CompiledLogic", "Kind", "compile_logic", "compile_value", "logic_variables", "top_level_conditions"]
