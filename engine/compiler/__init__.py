"""JSON Logic compiled to ClickHouse SQL over one entity row, with the interpreter's semantics exactly.

The modules, each owning one concern: `types` (the static kinds of subexpressions), `logic_tree` (what a logic
reads), `coercions` (JavaScript's conversions between kinds), `comparisons` (equality, order, membership),
`operators` (the SQL of each operator and the dispatch tables; the semantics are described there) and
`compilation` (the compile step that walks a logic and collects its parameters).
"""

from engine.compiler.compilation import MAX_SQL_LENGTH, CompiledLogic, compile_logic
from engine.compiler.logic_tree import first_variable, logic_variables, top_level_conditions
from engine.compiler.types import Kind

__all__ = ["MAX_SQL_LENGTH", "CompiledLogic", "Kind", "compile_logic", "first_variable", "logic_variables", "top_level_conditions"]
