"""The one error family of the engine: every message names what is wrong so a user can fix it."""


class RuleError(Exception):
    """Base of every error the engine raises about a rule."""


class ValidationProblem:
    """One problem in a rule document: the JSON path where it is and a plain reason."""

    __slots__ = ("path", "reason")

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason

    def __repr__(self) -> str:
        return f"ValidationProblem({self.path!r}, {self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValidationProblem) and (self.path, self.reason) == (other.path, other.reason)

    def __hash__(self) -> int:
        return hash((self.path, self.reason))


class RuleValidationError(RuleError):
    """A rule document breaks the format or its limits; `problems` lists every one found."""

    def __init__(self, problems: list[ValidationProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class NotCompilable(RuleError):
    """The compiler cannot express this logic faithfully in SQL; the rule runs on the interpreter path."""


class LogicEvaluationError(RuleError):
    """The interpreter could not evaluate a rule's logic over an entity."""
