"""The one error the planner raises: it says what does not fit and what would."""


class PlanError(ValueError):
    """A plan that cannot work. The message names the model, the need, what is available and the fixes."""
